"""A platform engineer's first install on a real GPU cluster, on paper: every value the chart offers for it
renders, through the real helm, into objects that are valid in strict mode and do what the value says
(model cache on any cluster, GPU resource names and node labels, pod extras, Hugging Face token and
offline switch, monitoring that a stock kube-prometheus-stack selects, rollouts that keep a ready replica,
TLS-safe probes, render-stable auth for GitOps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import (
    CHART,
    KUBE_VERSIONS,
    PROFILES,
    Helm,
    by_kind,
    component,
    deployments,
    validate_strict,
    write_values,
)


def pod_of(objects: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    return deployments(objects)[svc]["spec"]["template"]["spec"]


def container_of(objects: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    return pod_of(objects, svc)["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """Env entries by name: the value, or the valueFrom source."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def strict_valid(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        for version in KUBE_VERSIONS:
            validate_strict(obj, version)


def node_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["default", *PROFILES])
def test_two_renders_without_a_cluster_are_byte_identical(helm: Helm, profile: str | None) -> None:
    """What Argo CD and Flux see on every sync: no random token, nothing that changes between renders."""
    sets = ["gateway.enabled=true", "auth.backends=true"]
    first, second = helm.template(profile, sets=sets), helm.template(profile, sets=sets)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_model_cache_choices_that_work_on_any_cluster(helm: Helm) -> None:
    # A shared ReadWriteMany claim on a named class; the claim survives uninstall.
    shared = helm.render(sets=["modelCache.type=pvc", "modelCache.storageClassName=filestore"])
    strict_valid(shared)
    (claim,) = by_kind(shared, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "filestore"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for svc in ("stt", "llm", "tts"):
        (models,) = [v for v in pod_of(shared, svc)["volumes"] if v["name"] == "models"]
        assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # Per pod: each pod's own ReadWriteOnce volume from a claim template, sized per service.
    per_pod = helm.render(sets=["modelCache.storageClassName=premium-rwo", "llm.modelCacheSize=300Gi"])
    strict_valid(per_pod)
    (models,) = [v for v in pod_of(per_pod, "llm")["volumes"] if v["name"] == "models"]
    spec = models["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert spec == {"accessModes": ["ReadWriteOnce"], "storageClassName": "premium-rwo",
                    "resources": {"requests": {"storage": "300Gi"}}}
    # An existing claim: no claim of the chart's.
    existing = helm.render(sets=["modelCache.type=pvc", "modelCache.existingClaim=weights"])
    assert not by_kind(existing, "PersistentVolumeClaim")
    (models,) = [v for v in pod_of(existing, "stt")["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"]["claimName"] == "weights"
    # ReadWriteOnce is fine when a single pod ever mounts it (duplex alone, recreated in place).
    single = helm.render(sets=[
        "stt.enabled=false", "llm.enabled=false", "tts.enabled=false", "duplex.enabled=true",
        "modelCache.type=pvc", "modelCache.accessModes[0]=ReadWriteOnce",
        "duplex.rollout.maxSurge=0", "duplex.rollout.maxUnavailable=1", "duplex.rollout.allowZeroReady=true",
    ])
    strict_valid(single)
    # Node-local: an init step hands the root-created directory to the non-root user first.
    local = helm.render(sets=["modelCache.type=hostPath", "podSecurityContext.runAsUser=2000",
                              "podSecurityContext.runAsGroup=3000"])
    strict_valid(local)
    pod = pod_of(local, "llm")
    owner, fetch = pod["initContainers"]
    assert owner["command"] == ["chown", "2000:3000", "/models"] and fetch["name"] == "fetch-model"
    assert owner["securityContext"]["runAsUser"] == 0 and owner["securityContext"]["capabilities"]["add"] == ["CHOWN"]


def test_gpu_resource_names_node_presets_and_runtime_class(helm: Helm, tmp_path: Path) -> None:
    values = write_values(tmp_path, "gpu.yaml", """
gpu:
  runtimeClassName: nvidia
  nodeSelection: {preset: gke, gkeAccelerators: [nvidia-h100-80gb]}
stt:
  gpuResource: nvidia.com/mig-3g.40gb
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions: [{key: pool, operator: In, values: [a]}]
          - matchExpressions: [{key: pool, operator: In, values: [b]}]
tts:
  runtimeClassName: kata
""")
    objects = helm.render(values=[values])
    strict_valid(objects)
    stt, llm = pod_of(objects, "stt"), pod_of(objects, "llm")
    assert container_of(objects, "stt")["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == 1
    assert "nvidia.com/gpu" not in container_of(objects, "stt")["resources"]["limits"]
    assert container_of(objects, "llm")["resources"]["limits"]["nvidia.com/gpu"] == 1
    gke = {"key": "cloud.google.com/gke-accelerator", "operator": "In", "values": ["nvidia-h100-80gb"]}
    # The preset is ANDed into each of the operator's terms (terms are ORed by Kubernetes).
    assert [t["matchExpressions"] for t in node_terms(stt)] == [
        [{"key": "pool", "operator": "In", "values": ["a"]}, gke],
        [{"key": "pool", "operator": "In", "values": ["b"]}, gke]]
    assert node_terms(llm) == [{"matchExpressions": [gke]}]
    assert stt["runtimeClassName"] == llm["runtimeClassName"] == "nvidia"
    assert pod_of(objects, "tts")["runtimeClassName"] == "kata", "per service wins"
    orch = pod_of(objects, "orchestrator")
    assert "runtimeClassName" not in orch and "affinity" not in orch, "CPU pods get no GPU constraints"
    any_gke = pod_of(helm.render(sets=["gpu.nodeSelection.preset=gke"]), "llm")
    assert node_terms(any_gke) == [{"matchExpressions": [{"key": "cloud.google.com/gke-accelerator",
                                                          "operator": "Exists"}]}]
    plain = pod_of(helm.render(), "llm")
    assert "affinity" not in plain and "nodeSelector" not in plain, "default: the GPU request alone picks nodes"


def test_pod_extras_are_declared_and_land_in_the_pods(helm: Helm, tmp_path: Path) -> None:
    values = write_values(tmp_path, "extras.yaml", """
stt:
  podLabels: {team: voice}
  podAnnotations: {example.com/owner: voice-team}
  extraEnv:
    - {name: CT2_VERBOSE, value: "1"}
    - name: FROM_SECRET
      valueFrom: {secretKeyRef: {name: s, key: k}}
  extraVolumes:
    - {name: lexicon, configMap: {name: lexicon}}
  extraVolumeMounts:
    - {name: lexicon, mountPath: /etc/lexicon, readOnly: true}
  tolerations:
    - {key: dedicated, operator: Equal, value: voice, effect: NoSchedule}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector: {matchLabels: {app.kubernetes.io/component: stt}}
  probes:
    readiness: {periodSeconds: 2}
    liveness:
      exec: {command: [voxgrid, health]}
orchestrator:
  probes:
    startup: {failureThreshold: 100}
extraObjects:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: "{{ .Release.Name }}-lexicon"}
    data: {words: "voxgrid"}
""")
    objects = helm.render(values=[values])
    strict_valid(objects)
    deployment = deployments(objects)["stt"]
    meta = deployment["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "voice" and meta["labels"]["app.kubernetes.io/component"] == "stt"
    assert meta["annotations"]["example.com/owner"] == "voice-team"
    pod, c = pod_of(objects, "stt"), container_of(objects, "stt")
    env = env_of(c)
    assert env["CT2_VERBOSE"] == "1" and env["FROM_SECRET"] == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert {"name": "lexicon", "configMap": {"name": "lexicon"}} in pod["volumes"]
    assert {"name": "lexicon", "mountPath": "/etc/lexicon", "readOnly": True} in c["volumeMounts"]
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", "nvidia.com/gpu"], "the operator's, then the GPU ones"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert c["readinessProbe"]["periodSeconds"] == 2 and c["readinessProbe"]["grpc"] == {"port": 50051}
    assert c["livenessProbe"]["exec"] == {"command": ["voxgrid", "health"]} and "grpc" not in c["livenessProbe"]
    orch = deployments(objects)["orchestrator"]
    assert container_of(objects, "orchestrator")["startupProbe"]["failureThreshold"] == 100
    assert orch["spec"]["progressDeadlineSeconds"] >= 100 * 10, "the deadline follows the startup budget"
    (extra,) = [o for o in by_kind(objects, "ConfigMap").values() if o["metadata"]["name"] == "vg-lexicon"]
    assert extra["data"] == {"words": "voxgrid"}


def test_hugging_face_token_offline_switch_revision_and_file_filter(helm: Helm) -> None:
    objects = helm.render(sets=[
        "modelCache.hfTokenSecret=hf", "modelCache.offline=true", "llm.download.revision=0123abcd",
        "llm.settings.model=meta-llama/Llama-3.1-8B-Instruct",
    ])
    strict_valid(objects)
    pod = pod_of(objects, "llm")
    (fetch,) = pod["initContainers"]
    server, init = env_of(pod["containers"][0]), env_of(fetch)
    token = {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}
    assert server["HF_TOKEN"] == init["HF_TOKEN"] == token, "the server needs the token too (gated configs)"
    assert server["HF_HUB_OFFLINE"] == init["HF_HUB_OFFLINE"] == "1"
    assert init["MODEL_REVISION"] == "0123abcd"
    assert server["VOXGRID_LLM_MODEL"] == init["MODEL_DIR"] == "/models/hub/meta-llama/Llama-3.1-8B-Instruct/0123abcd"
    allow, ignore = json.loads(init["ALLOW_PATTERNS"]), json.loads(init["IGNORE_PATTERNS"])
    assert "*.safetensors" in allow and "original/*" in ignore, "only the format vLLM loads"
    assert "HF_TOKEN" not in env_of(container_of(objects, "orchestrator"))


def test_h100_profile_installs_without_a_token_and_speaks_english_on_a_slice(helm: Helm) -> None:
    objects = helm.render("h100")
    values = yaml.safe_load((CHART / "values-h100.yaml").read_text())
    assert not values["llm"]["settings"]["model"].startswith(("meta-llama/", "google/gemma"))
    assert "hfTokenSecret" not in values.get("modelCache", {})
    tts = env_of(container_of(objects, "tts"))
    assert tts["VOXGRID_TTS_ENGINE"] == "kokoro" and tts["VOXGRID_TTS_KOKORO_LANG"] == "en-us"
    assert tts["VOXGRID_TTS_DEFAULT_VOICE"].startswith(("af_", "am_")), "an American English voice"
    assert tts["VOXGRID_TTS_KOKORO_MODEL_PATH"].startswith("/models/")
    limits = container_of(objects, "tts")["resources"]["limits"]
    assert limits == {"memory": limits["memory"], "nvidia.com/mig-1g.10gb": 1}, "a slice, not a whole H100"
    (client,) = [s for s in objects if s["kind"] == "Service" and s["spec"].get("type") == "LoadBalancer"]
    assert component(client) == "orchestrator"
    assert env_of(container_of(objects, "orchestrator"))["VOXGRID_ORCHESTRATOR_TLS_CERT_FILE"]


def test_prometheus_selects_the_monitors_and_may_scrape(helm: Helm) -> None:
    objects = helm.render("h100")
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    (rule,) = by_kind(objects, "PrometheusRule").values()
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    policies = [p for p in objects if p["kind"] == "NetworkPolicy"]
    for policy in policies:
        (peer,) = policy["spec"]["ingress"][1]["from"]
        prometheus = {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
        assert peer == {"namespaceSelector": {}, "podSelector": prometheus}
    assert "kubernetes.io/metadata.name" not in json.dumps(policies), "no namespace name hard-wired"
    named = helm.render("h100", sets=["monitoring.serviceMonitor.labels.release=prom",
                                      "monitoring.prometheusRule.labels.release=prom",
                                      "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=obs"])
    assert by_kind(named, "ServiceMonitor").popitem()[1]["metadata"]["labels"]["release"] == "prom"
    assert by_kind(named, "PrometheusRule").popitem()[1]["metadata"]["labels"]["release"] == "prom"
    policy = next(p for p in named if p["kind"] == "NetworkPolicy")
    assert policy["spec"]["ingress"][1]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    for svc in ("Stt", "Llm", "Tts", "Duplex", "Orchestrator"):
        assert {f"Voxgrid{svc}MetricsAbsent", f"Voxgrid{svc}NoReadyReplica"} <= alerts


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["default", *PROFILES])
def test_rollouts_never_take_the_last_ready_replica_down(helm: Helm, profile: str | None) -> None:
    """By construction: maxUnavailable 0 keeps every old pod until its replacement is ready, so ready pods
    never fall below the replica count during a rollout (the figure printed with pytest -s)."""
    objects = helm.render(profile)
    for svc, d in deployments(objects).items():
        update = d["spec"]["strategy"]["rollingUpdate"]
        replicas = d["spec"].get("replicas")
        if replicas is None:  # the autoscaler owns replicas: its floor
            (hpa,) = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
                      and component(o) == svc]
            replicas = hpa["spec"].get("minReplicas", hpa["spec"].get("minReplicaCount"))
        assert update == {"maxSurge": 1, "maxUnavailable": 0}, svc
        lowest_ready = replicas - update["maxUnavailable"]
        assert lowest_ready >= 1, f"{svc} could lose its last ready replica"
        startup = d["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert d["spec"]["progressDeadlineSeconds"] >= budget + 600, "a slow model load is not a failed rollout"
        print(f"{profile or 'default':8s} {svc:13s} replicas {replicas}  surge 1  unavailable 0  "
              f"ready never below {lowest_ready}  seconds at zero ready: 0  progressDeadline "
              f"{d['spec']['progressDeadlineSeconds']} s (startup budget {budget} s)")


def test_images_default_to_the_chart_app_version_on_the_documented_registry(helm: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    objects = helm.render()
    for svc, d in deployments(objects).items():
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"ghcr.io/voxgrid/voxgrid-{svc}:{chart['appVersion']}"
    pinned = helm.render(sets=["image.registry=registry.example.com", "image.tag=0.2.0-rc1",
                               "llm.image.repository=mirror.example.com/llm", "llm.image.tag=sha-abc"])
    images = {svc: d["spec"]["template"]["spec"]["containers"][0]["image"] for svc, d in deployments(pinned).items()}
    assert images["stt"] == "registry.example.com/voxgrid/voxgrid-stt:0.2.0-rc1"
    assert images["llm"] == "mirror.example.com/llm:sha-abc"
