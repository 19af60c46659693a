"""The chart, rendered by the real helm for every profile and a few value combinations: lint clean,
every object valid against the Kubernetes schemas in strict mode, and the properties an operator
relies on (GPUs, probes, drain, discovery, RBAC, non-root, autoscaling, monitoring)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import (
    KUBE_VERSIONS,
    NAMESPACE,
    PROFILES,
    Helm,
    by_kind,
    component,
    deployments,
    validate_strict,
)

BACKENDS = ("stt", "llm", "tts", "duplex")
GPU = "nvidia.com/gpu"

# (profile, --set overrides) pairs rendered and validated; ids name what each one exercises.
CASES: dict[str, tuple[str | None, list[str]]] = {
    "default": (None, []),
    **{p: (p, []) for p in PROFILES},
    "k8s-discovery": (None, ["orchestrator.discovery=k8s"]),
    "keda-everywhere": ("h100", [f"{s}.autoscaling.mode=keda" for s in (*BACKENDS, "orchestrator")]),
    "duplex-only": (None, ["stt.enabled=false", "llm.enabled=false", "tts.enabled=false", "duplex.enabled=true"]),
    "edge-exposed": ("cpu", [
        "tls.enabled=true", "tls.secretName=vg-tls", "auth.backends=true",
        "orchestrator.ingress.enabled=true", "orchestrator.ingress.tlsSecretName=vg-tls",
        "orchestrator.grpcRoute.enabled=true", "orchestrator.grpcRoute.parentRefs[0].name=edge",
        "orchestrator.service.type=LoadBalancer", "orchestrator.service.loadBalancerSourceRanges[0]=10.0.0.0/8",
    ]),
    "hostpath-no-auth-no-netpol": ("a100", [
        "modelCache.type=hostPath", "auth.enabled=false", "networkPolicy.enabled=false",
        "modelCache.hfTokenSecret=hf", "llm.settings.quantization=fp8",
    ]),
    "external-llm": ("cpu", ["llm.enabled=false", "orchestrator.externalBackends.llm=static:10.1.2.3:50051"]),
    "gateway": ("cpu", [
        "gateway.enabled=true", "gateway.ingress.enabled=true", "gateway.ingress.tlsSecretName=vg-tls",
        "networkPolicy.clientsFrom[0].podSelector.matchLabels.role=client",
    ]),
    "gateway-tls-k8s-discovery": ("h100", [
        "gateway.enabled=true", "orchestrator.discovery=k8s", "tls.enabled=true", "tls.secretName=vg-tls",
        "gateway.service.type=LoadBalancer", "gateway.settings.defaultProfile=support",
    ]),
    "profiles-adapters-voices": ("cpu", [
        "orchestrator.profiles.support.description=Support line", "orchestrator.profiles.support.voice=acme",
        "orchestrator.profiles.support.adapter=support", "orchestrator.profiles.support.speed=1.1",
        "llm.adapters.type=pvc", "tts.voices.type=hostPath", "tts.voices.hostPath=/srv/voxgrid/voices",
    ]),
}
GATEWAY_CASES = ("gateway", "gateway-tls-k8s-discovery")


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    """Every case rendered once for the whole module."""
    return {name: helm.render(profile, sets=sets) for name, (profile, sets) in CASES.items()}


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def pod_containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(deployment name, pod spec, container) for every container and init container."""
    out = []
    for d in objects:
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                out.append((d["metadata"]["name"], pod, c))
    return out


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["default", *PROFILES])
def test_helm_lint_is_clean(helm: Helm, profile: str | None) -> None:
    done = helm.lint(profile)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout
    assert "[ERROR]" not in done.stdout and "[WARNING]" not in done.stdout, done.stdout


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_is_schema_valid_strict(
    rendered: dict[str, list[dict[str, Any]]], case: str, kube_version: str
) -> None:
    objects = rendered[case]
    assert objects, "nothing rendered"
    for obj in objects:
        validate_strict(obj, kube_version)  # raises with the offending path
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "two objects share a kind and name"
    assert all(o["metadata"].get("namespace", NAMESPACE) == NAMESPACE for o in objects)


def test_strict_validation_is_not_vacuous(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """An unknown field or a wrong type in a rendered Deployment must be caught."""
    import copy

    import kubernetes_validate

    deployment = next(iter(deployments(rendered["default"]).values()))
    typo = copy.deepcopy(deployment)
    main_container(typo)["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(typo, KUBE_VERSIONS[-1])
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "long"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(wrong_type, KUBE_VERSIONS[-1])


def test_figures_objects_per_profile(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Prints the closing-note figures (pytest -s): objects per profile and kinds."""
    for case in ("default", *PROFILES):
        kinds: dict[str, int] = {}
        for o in rendered[case]:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        print(f"{case:8s} {len(rendered[case]):3d} objects  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    assert len(rendered["h100"]) > len(rendered["cpu"])


EXPECTED_GPUS = {
    "default": {"stt": 1, "llm": 1},
    "h100": {"stt": 1, "llm": 1, "tts": 1, "duplex": 1},
    "a100": {"stt": 1, "llm": 2},
    "cpu": {},
}


# The H100 profile's TTS (Kokoro-82M) asks for a MIG slice, not a whole GPU.
GPU_RESOURCES = {("h100", "tts"): "nvidia.com/mig-1g.10gb"}


@pytest.mark.parametrize("case", list(EXPECTED_GPUS))
def test_gpus_requested_only_by_gpu_engines(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for svc, d in deployments(rendered[case]).items():
        pod = d["spec"]["template"]["spec"]
        resources = main_container(d)["resources"]
        want = EXPECTED_GPUS[case].get(svc)
        tolerates_gpu = any(t.get("key") == GPU for t in pod.get("tolerations", []))
        resource = GPU_RESOURCES.get((case, svc), GPU)
        if want:
            assert resources["limits"][resource] == want and resources["requests"][resource] == want, svc
            assert tolerates_gpu, f"{svc} asks for a GPU but does not tolerate GPU nodes"
        else:
            assert not any(k.startswith("nvidia.com/") for k in (*resources.get("limits", {}),
                                                                 *resources.get("requests", {}))), svc
            assert not tolerates_gpu, f"{svc} runs on CPU but tolerates GPU nodes"
        for init in pod.get("initContainers", []):
            assert GPU not in init["resources"].get("limits", {}), "the model fetcher needs no GPU"


def test_profiles_pin_gpu_models(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """GPU feature discovery labels, every board variant of the profile's GPU (SXM, PCIe, NVL)."""
    for case, product in (("h100", "NVIDIA-H100-PCIe"), ("a100", "NVIDIA-A100-SXM4-80GB")):
        for svc in EXPECTED_GPUS[case]:
            pod = deployments(rendered[case])[svc]["spec"]["template"]["spec"]
            (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"]
            exprs = {e["key"]: e for e in term["matchExpressions"]}
            assert exprs["nvidia.com/gpu.present"]["values"] == ["true"]
            assert product in exprs["nvidia.com/gpu.product"]["values"]
            assert "nodeSelector" not in pod


@pytest.mark.parametrize("case", list(CASES))
def test_probes_are_native_grpc_health(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    """gRPC services: native gRPC health probes (liveness on `voxgrid.liveness`). The gateway is HTTP:
    /healthz (alive) and /readyz (an orchestrator is known and the pod is not draining) on its 8080 port,
    HTTPS when TLS is on."""
    tls = any(o["kind"] == "Deployment" and "tls" in {v["name"] for v in o["spec"]["template"]["spec"]["volumes"]}
              for o in rendered[case])
    for svc, d in deployments(rendered[case]).items():
        c = main_container(d)
        if svc == "gateway":
            paths = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
            for probe, path in paths.items():
                assert c[probe]["httpGet"] == {"path": path, "port": "http", "scheme": "HTTPS" if tls else "HTTP"}
                assert not {"exec", "grpc", "tcpSocket"} & set(c[probe])
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports == {"http": 8080, "metrics": 9090}
        else:
            # With TLS the gRPC port speaks only TLS; the kubelet probes the plaintext health-only port.
            health = 50052 if tls else 50051
            # Liveness never restarts a pod for loading, draining or a missing backend (voxgrid.liveness
            # answers whenever the process does); the orchestrator's startup likewise, since its readiness
            # waits for backends that may take many minutes to load.
            alive = {"port": health, "service": "voxgrid.liveness"}
            expected = {"startupProbe": alive if svc == "orchestrator" else {"port": health},
                        "readinessProbe": {"port": health}, "livenessProbe": alive}
            for probe, grpc in expected.items():
                assert c[probe]["grpc"] == grpc, f"{svc} {probe}"
                assert not {"exec", "httpGet", "tcpSocket"} & set(c[probe])
            assert {p["containerPort"] for p in c["ports"]} == ({50051, 9090, 50052} if tls else {50051, 9090})
            assert env_of(c).get(f"VOXGRID_{svc.upper()}_HEALTH_PORT") == ("50052" if tls else None)
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, f"{svc}: startup window too short"


def test_startup_window_follows_startup_timeout(helm: Helm) -> None:
    objects = helm.render(sets=["llm.startupTimeoutSeconds=1801"])
    startup = main_container(deployments(objects)["llm"])["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1801


@pytest.mark.parametrize("case", list(CASES))
def test_termination_grace_covers_prestop_and_drain(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for svc, d in deployments(rendered[case]).items():
        pod = d["spec"]["template"]["spec"]
        c = main_container(d)
        drain = float(env_of(c)[f"VOXGRID_{svc.upper()}_DRAIN_GRACE_S"])
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop >= 1
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5, svc


def test_explicit_termination_grace_is_kept(helm: Helm) -> None:
    objects = helm.render(sets=["orchestrator.terminationGracePeriodSeconds=900"])
    assert deployments(objects)["orchestrator"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900


@pytest.mark.parametrize("case", list(CASES))
def test_each_container_runs_its_service(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for svc, d in deployments(rendered[case]).items():
        c = main_container(d)
        assert c["command"] == ["voxgrid", "serve", svc]
        # The CPU profile's LLM runs the transformers engine: the LLM image's CPU build.
        image = "llm-cpu" if (svc == "llm" and env_of(c)["VOXGRID_LLM_ENGINE"] == "transformers") else svc
        assert c["image"] == f"ghcr.io/voxgrid/voxgrid-{image}:0.1.0"
        env = env_of(c)
        prefix = f"VOXGRID_{svc.upper()}_"
        port = "8080" if svc == "gateway" else "50051"  # the gateway speaks HTTP/WebSocket, not gRPC
        assert env[prefix + "HOST"] == "0.0.0.0" and env[prefix + "PORT"] == port
        assert env[prefix + "METRICS_PORT"] == "9090"
        assert int(env[prefix + "MAX_SESSIONS"]) >= 1
        shared = {"VOXGRID_CACHE_DIR"}  # where any voxgrid process keeps models it builds
        foreign = [k for k in env if k.startswith("VOXGRID_") and not k.startswith(prefix) and k not in shared]
        assert not foreign, f"{svc} gets another service's settings: {foreign}"


def test_settings_map_to_env_vars(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = env_of(main_container(deployments(rendered["h100"])["llm"]))
    assert env["VOXGRID_LLM_ENGINE"] == "vllm"
    # The hub model as the init container cached it (revision main): the server never re-resolves it.
    assert env["VOXGRID_LLM_MODEL"] == "/models/hub/Qwen/Qwen2.5-7B-Instruct/main"
    assert env["VOXGRID_LLM_MAX_MODEL_LEN"] == "16384"  # not 1.6384e+04
    assert env["VOXGRID_LLM_GPU_MEMORY_UTILIZATION"] == "0.9"
    assert env["VOXGRID_LLM_TENSOR_PARALLEL_SIZE"] == "1"
    assert env["VOXGRID_LLM_ENABLE_LORA"] == "true"
    assert "VOXGRID_LLM_QUANTIZATION" not in env, "empty settings must leave the service default"
    stt = env_of(main_container(deployments(rendered["cpu"])["stt"]))
    assert (stt["VOXGRID_STT_MODEL"], stt["VOXGRID_STT_DEVICE"], stt["VOXGRID_STT_COMPUTE_TYPE"]) == (
        "tiny.en-package", "cpu", "int8")
    duplex = env_of(main_container(deployments(rendered["h100"])["duplex"]))
    assert duplex["VOXGRID_DUPLEX_SLOTS"] == duplex["VOXGRID_DUPLEX_MAX_SESSIONS"] == "16"


def headless_services(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {component(s): s for s in objects if s["kind"] == "Service" and s["spec"].get("clusterIP") == "None"}


@pytest.mark.parametrize("case", list(CASES))
def test_backends_are_headless_and_the_orchestrator_discovers_them(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    objects = rendered[case]
    deps = deployments(objects)
    headless = headless_services(objects)
    orch_env = env_of(main_container(deps["orchestrator"]))
    k8s_cases = ("k8s-discovery", "a100", "hostpath-no-auth-no-netpol", "gateway-tls-k8s-discovery")
    discovery = "k8s" if case in k8s_cases else "dns"
    for svc in BACKENDS:
        value = orch_env.get(f"VOXGRID_ORCHESTRATOR_{svc.upper()}_BACKENDS")
        if svc not in deps:
            assert value is None or value.startswith("static:"), f"{svc} is off but discovered: {value}"
            continue
        service = headless[svc]
        pod_labels = deps[svc]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), f"{svc} Service selects no pod"
        assert {p["port"] for p in service["spec"]["ports"]} == {50051, 9090}
        assert not service["spec"]["publishNotReadyAddresses"], "draining pods must leave DNS"
        name = service["metadata"]["name"]
        if discovery == "dns":
            assert value == f"dns:{name}.{NAMESPACE}.svc.cluster.local:50051"
        else:
            assert value == f"k8s:{NAMESPACE}/{name}:50051"
    client = [s for s in objects if s["kind"] == "Service" and component(s) == "orchestrator"
              and s["spec"].get("clusterIP") != "None"]
    assert len(client) == 1 and [p["port"] for p in client[0]["spec"]["ports"]] == [50051]
    assert client[0]["spec"]["selector"].items() <= deps["orchestrator"]["spec"]["template"]["metadata"][
        "labels"].items()


def test_external_backend_wins(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = env_of(main_container(deployments(rendered["external-llm"])["orchestrator"]))
    assert env["VOXGRID_ORCHESTRATOR_LLM_BACKENDS"] == "static:10.1.2.3:50051"
    assert "llm" not in deployments(rendered["external-llm"])


@pytest.mark.parametrize("case", list(CASES))
def test_rbac_is_minimal(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    objects = rendered[case]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    deps = deployments(objects)
    hook = {o["metadata"]["name"] for o in objects if "helm.sh/hook" in o["metadata"].get("annotations", {})}
    roles = [r for r in by_kind(objects, "Role").values() if r["metadata"]["name"] not in hook]
    uses_k8s = any(v.startswith("k8s:") for v in env_of(main_container(deps["orchestrator"])).values())
    for svc, d in deps.items():
        pod = d["spec"]["template"]["spec"]
        mounts_token = pod["automountServiceAccountToken"]
        assert mounts_token == (svc == "orchestrator" and uses_k8s), f"{svc} mounts an API token needlessly"
    bindings = [b for b in by_kind(objects, "RoleBinding").values() if b["metadata"]["name"] not in hook]
    if not uses_k8s:
        assert not roles and not bindings
        return
    assert len(roles) == 1
    assert roles[0]["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
    ]
    (binding,) = bindings
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": roles[0]["metadata"]["name"]}
    orch_sa = deps["orchestrator"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": orch_sa, "namespace": NAMESPACE}]
    assert orch_sa in by_kind(objects, "ServiceAccount")


@pytest.mark.parametrize("case", list(CASES))
def test_no_container_runs_as_root(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for name, pod, c in pod_containers(rendered[case]):
        if c["name"] == "cache-owner":
            # hostPath only: chown of the cache directory, root with CHOWN alone, nothing else.
            assert c["command"][0] == "chown" and c["securityContext"]["capabilities"] == {
                "drop": ["ALL"], "add": ["CHOWN"]}
            continue
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        assert csc.get("runAsUser", psc.get("runAsUser", 0)) != 0, name
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"]
        assert csc["readOnlyRootFilesystem"] is True
        assert not csc.get("privileged", False)
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, "a read-only root needs writable scratch space"


@pytest.mark.parametrize("case", ["default", "h100", "hostpath-no-auth-no-netpol", "cpu"])
def test_model_cache_and_prefetch(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    objects = rendered[case]
    for svc, d in deployments(objects).items():
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        env = env_of(main_container(d))
        if svc == "orchestrator":
            assert "models" not in volumes and "initContainers" not in pod
            continue
        assert env["HF_HOME"] == "/models/huggingface" and env["VOXGRID_CACHE_DIR"] == "/models/voxgrid"
        assert "/models" in {m["mountPath"] for m in main_container(d)["volumeMounts"]}
        inits = {c["name"]: c for c in pod.get("initContainers", [])}
        model = env.get(f"VOXGRID_{svc.upper()}_MODEL", "")
        if model.startswith("/models/hub/"):
            fetch = env_of(inits["fetch-model"])
            assert inits["fetch-model"]["image"] == main_container(d)["image"], "the fetcher runs the service's image"
            assert model == fetch["MODEL_DIR"] == f"/models/hub/{fetch['MODEL_REF']}/main"
            assert fetch["HF_HOME"] == "/models/huggingface"
            assert json.loads(fetch["ALLOW_PATTERNS"]), "only the formats the engine loads"
        elif svc == "tts" and case == "h100":
            files = json.loads(env_of(inits["fetch-model"])["EXTRA_FILES"])
            assert {f["path"] for f in files} == {"kokoro/kokoro-v1.0.onnx", "kokoro/voices-v1.0.bin"}
        else:
            assert "fetch-model" not in inits, f"{svc}: {model!r} needs no download"
        models = volumes["models"]
        if case == "cpu":
            assert "emptyDir" in models
        elif case.startswith("hostpath"):
            assert models["hostPath"]["path"] == "/var/lib/voxgrid/models"
            assert next(iter(inits)) == "cache-owner", "ownership is fixed before anything writes there"
            assert inits["cache-owner"]["command"] == ["chown", "10001:10001", "/models"]
        else:
            claim = models["ephemeral"]["volumeClaimTemplate"]["spec"]
            assert claim["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim
            assert claim["resources"]["requests"]["storage"].endswith("Gi")
            assert not by_kind(objects, "PersistentVolumeClaim"), "per-pod volumes need no shared claim"


def run_fetch_script(init: dict[str, Any], root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The init container's real script, run here against a local models root."""
    assert init["command"] == ["python", "-c"]
    return subprocess.run([sys.executable, "-c", init["args"][0]], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MODELS_ROOT": str(root), "MODEL_REF": "", **env})


def test_fetch_script_downloads_extra_files_once_and_refuses_offline_gaps(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    import http.server
    import threading

    init = deployments(rendered["h100"])["tts"]["spec"]["template"]["spec"]["initContainers"][0]
    served = tmp_path / "served"
    served.mkdir()
    (served / "voices.bin").write_bytes(b"\x00voices" * 1000)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        files = json.dumps([{"url": f"http://127.0.0.1:{server.server_port}/voices.bin", "path": "kokoro/v.bin"}])
        root = tmp_path / "models"
        done = run_fetch_script(init, root, EXTRA_FILES=files)
        assert done.returncode == 0, done.stderr
        assert (root / "kokoro/v.bin").read_bytes() == (served / "voices.bin").read_bytes()
        assert not list(root.rglob("*.part"))
        again = run_fetch_script(init, root, EXTRA_FILES=files, HF_HUB_OFFLINE="1")
        assert again.returncode == 0 and "in the cache" in again.stdout
    finally:
        server.shutdown()
    # Offline with an empty cache: a clear failure in the init container, not a crash inside the engine.
    empty = tmp_path / "empty"
    missing = run_fetch_script(init, empty, MODEL_REF="Qwen/Qwen2.5-7B-Instruct",
                               MODEL_DIR=str(empty / "hub/Qwen/Qwen2.5-7B-Instruct/main"), HF_HUB_OFFLINE="1")
    assert missing.returncode != 0
    assert "HF_HUB_OFFLINE is set but Qwen/Qwen2.5-7B-Instruct is not in the cache" in missing.stderr



def test_autoscaling_on_active_sessions_vs_capacity(rendered: dict[str, list[dict[str, Any]]]) -> None:
    h100 = rendered["h100"]
    hpas = {component(h): h for h in h100 if h["kind"] == "HorizontalPodAutoscaler"}
    deps = deployments(h100)
    assert set(hpas) == {"stt", "llm", "tts", "orchestrator"}
    for svc, hpa in hpas.items():
        (metric,) = hpa["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] == f"voxgrid_{svc}_active_sessions"
        capacity = int(env_of(main_container(deps[svc]))[f"VOXGRID_{svc.upper()}_MAX_SESSIONS"])
        assert metric["pods"]["target"]["averageValue"] == str(math.floor(capacity * 0.7))
        assert hpa["spec"]["scaleTargetRef"]["name"] == deps[svc]["metadata"]["name"]
        assert "replicas" not in deps[svc]["spec"], "the autoscaler owns replicas"
    assert "replicas" in deps["duplex"]["spec"]
    scaled = {component(s): s for s in rendered["a100"] if s["kind"] == "ScaledObject"}
    assert set(scaled) == {"stt", "llm", "tts"}
    headless = headless_services(rendered["a100"])
    for svc, so in scaled.items():
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        service = headless[svc]["metadata"]["name"]
        selector = f'{{namespace="{NAMESPACE}",service="{service}"}}'
        assert f"voxgrid_{svc}_active_sessions{selector}" in trigger["metadata"]["query"]
        assert isinstance(trigger["metadata"]["threshold"], str)
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in rendered["a100"])


def test_pdbs_cover_every_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["h100"]
    pdbs = {component(p): p for p in objects if p["kind"] == "PodDisruptionBudget"}
    deps = deployments(objects)
    assert set(pdbs) == set(deps)
    for svc, pdb in pdbs.items():
        assert pdb["spec"]["selector"]["matchLabels"].items() <= deps[svc]["spec"]["template"]["metadata"][
            "labels"].items()
        assert pdb["spec"]["maxUnavailable"] == 1


def test_monitoring_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["h100"]
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in objects if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()]
    assert {component(s) for s in scraped} == set(deployments(objects))
    assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in scraped)
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"

    (rule,) = by_kind(objects, "PrometheusRule").values()
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    v2v = alerts["VoiceToVoiceP95High"]["expr"]
    assert "histogram_quantile(0.95" in v2v and "voxgrid_orchestrator_voice_to_voice_seconds_bucket" in v2v
    assert v2v.strip().endswith("> 1")
    for svc in ("stt", "llm", "tts", "duplex", "orchestrator"):
        expr = alerts[f"Voxgrid{svc.title()}Saturated"]["expr"]
        assert f"voxgrid_{svc}_active_sessions" in expr and f"voxgrid_{svc}_session_capacity" in expr
        assert "RESOURCE_EXHAUSTED" in alerts[f"Voxgrid{svc.title()}RefusingSessions"]["expr"]
    assert "voxgrid_llm_time_to_first_token_seconds_bucket" in alerts["LlmTimeToFirstTokenP95High"]["expr"]

    (dashboard,) = by_kind(objects, "ConfigMap").values()
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["voxgrid.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ("voxgrid_orchestrator_voice_to_voice_seconds", "voxgrid_stt_finalization_seconds",
                   "voxgrid_llm_time_to_first_token_seconds", "voxgrid_tts_time_to_first_audio_seconds",
                   "voxgrid_stt_real_time_factor", "voxgrid_llm_session_capacity", "voxgrid_tts_errors_total"):
        assert metric in exprs, metric
    assert not by_kind(rendered["cpu"], "ServiceMonitor"), "monitoring CRDs are opt-in"


def test_network_policies_let_only_the_orchestrator_reach_backends(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["h100"]
    policies = {component(p): p for p in objects if p["kind"] == "NetworkPolicy"}
    deps = deployments(objects)
    assert set(policies) == set(deps)
    orch_labels = deps["orchestrator"]["spec"]["template"]["metadata"]["labels"]
    for svc, policy in policies.items():
        grpc_rule, metrics_rule = policy["spec"]["ingress"]
        assert grpc_rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
        assert metrics_rule["ports"] == [{"port": 9090, "protocol": "TCP"}]
        assert metrics_rule["from"], "metrics must not be open to everyone by default"
        if svc == "orchestrator":
            assert "from" not in grpc_rule, "clients reach the orchestrator by default"
        else:
            (peer,) = grpc_rule["from"]
            assert set(peer) == {"podSelector"}
            assert peer["podSelector"]["matchLabels"].items() <= orch_labels.items()
    assert not by_kind(rendered["hostpath-no-auth-no-netpol"], "NetworkPolicy")


def test_auth_secret_is_mounted_where_tokens_are_checked(
    rendered: dict[str, list[dict[str, Any]]], helm: Helm
) -> None:
    import base64

    objects = rendered["default"]
    # No tokens in values: nothing random is rendered; a hook Job makes the Secret in the cluster.
    assert not by_kind(objects, "Secret")
    (job,) = by_kind(objects, "Job").values()
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    job_env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert job_env["SECRET_NAME"] == "vg-voxgrid-auth" and job_env["BACKENDS"] == "false"
    for svc, d in deployments(objects).items():
        env = env_of(main_container(d))
        checks = f"VOXGRID_{svc.upper()}_AUTH_TOKEN_FILE" in env
        assert checks == (svc == "orchestrator"), f"{svc}: auth.backends is off by default"
    orch = deployments(objects)["orchestrator"]["spec"]["template"]["spec"]
    (vol,) = [v for v in orch["volumes"] if v["name"] == "auth"]
    assert vol["secret"]["secretName"] == job_env["SECRET_NAME"]
    edge = rendered["edge-exposed"]
    for svc, d in deployments(edge).items():
        env = env_of(main_container(d))
        assert env[f"VOXGRID_{svc.upper()}_AUTH_TOKEN_FILE"] == "/var/run/voxgrid/auth/tokens"
        assert env[f"VOXGRID_{svc.upper()}_TLS_CERT_FILE"] == "/var/run/voxgrid/tls/tls.crt"
        pod = d["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "auth"]
        key = "tokens" if svc == "orchestrator" else "backend-token"
        assert vol["secret"]["items"] == [{"key": key, "path": "tokens"}], "backends accept only the internal token"
    (edge_job,) = by_kind(edge, "Job").values()
    assert env_of(edge_job["spec"]["template"]["spec"]["containers"][0])["BACKENDS"] == "true"
    orch_env = main_container(deployments(edge)["orchestrator"])["env"]
    (backend_token,) = [e for e in orch_env if e["name"] == "VOXGRID_ORCHESTRATOR_BACKEND_TOKEN"]
    assert backend_token["valueFrom"]["secretKeyRef"]["key"] == "backend-token"
    # Tokens in values: the chart renders the Secret itself (and restarts pods when it changes).
    given = helm.render(sets=["auth.tokens[0]=aaaaaaaaaaaaaaaaaaaa", "auth.tokens[1]=bbbbbbbbbbbbbbbbbbbb"])
    (secret,) = by_kind(given, "Secret").values()
    assert base64.b64decode(secret["data"]["tokens"]).decode() == "aaaaaaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbbbb"
    assert "backend-token" not in secret["data"], "no internal token unless auth.backends"
    assert not by_kind(given, "Job")
    assert "checksum/auth" in deployments(given)["orchestrator"]["spec"]["template"]["metadata"]["annotations"]
    external = helm.render(sets=["auth.existingSecret=mine"])
    assert not by_kind(external, "Secret") and not by_kind(external, "Job")
    orch = deployments(external)["orchestrator"]["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in orch["volumes"] if v["name"] == "auth"] == ["mine"]


def test_auth_init_script_adds_only_missing_keys() -> None:
    """The hook Job's real script: keys the release needs are generated once, existing ones never change."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "helm/voxgrid/files/make_auth_secret.py"
    spec = importlib.util.spec_from_file_location("make_auth_secret", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.missing_keys({}, gateway=True, backends=True)
    client, gateway = fresh["tokens"].split("\n")
    assert gateway == fresh["gateway-token"] and len(client) >= 32 and len(fresh["backend-token"]) >= 32
    assert module.missing_keys(fresh, gateway=True, backends=True) == {}, "a complete Secret is kept as it is"
    later = module.missing_keys({"tokens": client}, gateway=True, backends=False)
    assert later["tokens"] == f"{client}\n{later['gateway-token']}", "the client token survives"


def test_gateway_and_ingress_route_grpc_to_the_orchestrator(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["edge-exposed"]
    (ingress,) = by_kind(objects, "Ingress").values()
    (route,) = by_kind(objects, "GRPCRoute").values()
    client = next(s for s in objects if s["kind"] == "Service" and s["spec"].get("type") == "LoadBalancer")
    # The pods speak TLS (tls.enabled): nginx must speak it to them too.
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == client["metadata"]["name"]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == client["metadata"]["name"]
    assert route["spec"]["parentRefs"] == [{"name": "edge"}]
    assert client["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]


def test_notes_render(helm: Helm) -> None:
    done = helm.run("install", "vg", str(Path(__file__).resolve().parents[2] / "helm" / "voxgrid"),
                    "--dry-run=client", "--namespace", NAMESPACE, "-f",
                    str(Path(__file__).resolve().parents[2] / "helm" / "voxgrid" / "values-cpu.yaml"))
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/vg-voxgrid-orchestrator 50051:50051" in notes
    assert "kubectl -n voice get secret vg-voxgrid-auth" in notes
    assert "tiny.en" in notes and "CPU" in notes
    assert "gateway" not in notes.lower(), "the gateway is off by default"
    done = helm.run("install", "vg", str(Path(__file__).resolve().parents[2] / "helm" / "voxgrid"),
                    "--dry-run=client", "--namespace", NAMESPACE, "--set", "gateway.enabled=true", "-f",
                    str(Path(__file__).resolve().parents[2] / "helm" / "voxgrid" / "values-cpu.yaml"))
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/vg-voxgrid-gateway 8080:8080" in notes
    assert "/phone/<profile>" in notes


def test_every_setting_reaches_its_env_var(helm: Helm, tmp_path: Path) -> None:
    """One home per knob: each <svc>.settings key of the schema becomes VOXGRID_<SVC>_<FIELD>."""
    schema = json.loads((Path(__file__).resolve().parents[2] / "helm/voxgrid/values.schema.json").read_text())
    values: dict[str, Any] = {"duplex": {"enabled": True}, "gateway": {"enabled": True}}
    expected: dict[str, set[str]] = {}
    for svc in ("stt", "llm", "tts", "duplex", "orchestrator", "gateway"):
        properties = schema["$defs"][f"{svc}Settings"]["properties"]
        settings = {k: p["default"] for k, p in properties.items() if p.get("default") not in (None, "")}
        if "model" in properties:
            settings["model"] = "org/model"
        values.setdefault(svc, {})["settings"] = settings
        # The env name the settings model declares (written into the schema from the pydantic field name).
        expected[svc] = {re.search(r"\[env (\w+)\]", properties[k]["description"]).group(1) for k in settings}
    values["duplex"]["maxSessions"] = values["duplex"]["settings"].get("slots", 1)
    path = tmp_path / "all-settings.yaml"
    path.write_text(json.dumps(values))
    deps = deployments(helm.render(values=[path]))
    for svc, names in expected.items():
        env = env_of(main_container(deps[svc]))
        assert names <= set(env), f"{svc}: {sorted(names - set(env))} not set"


def test_gateway_is_off_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case in ("default", *PROFILES):
        labels = [o["metadata"]["labels"] for o in rendered[case]]
        assert not [x for x in labels if x.get("app.kubernetes.io/component") == "gateway"]


@pytest.mark.parametrize("case", GATEWAY_CASES)
def test_gateway_reaches_the_orchestrator_headless_service(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    """The gateway balances calls itself over every orchestrator pod: the dns: form of the orchestrator's
    headless Service (also with orchestrator.discovery=k8s: the gateway needs no API access)."""
    objects = rendered[case]
    deps = deployments(objects)
    gateway = deps["gateway"]
    env = env_of(main_container(gateway))
    headless = headless_services(objects)["orchestrator"]
    name = headless["metadata"]["name"]
    assert env["VOXGRID_GATEWAY_ORCHESTRATOR_BACKENDS"] == f"dns:{name}.{NAMESPACE}.svc.cluster.local:50051"
    assert headless["spec"]["selector"].items() <= deps["orchestrator"]["spec"]["template"]["metadata"][
        "labels"].items()
    assert 50051 in {p["port"] for p in headless["spec"]["ports"]}
    pod = gateway["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "models" not in {v["name"] for v in pod["volumes"]} and "initContainers" not in pod
    assert env["VOXGRID_GATEWAY_DRAIN_GRACE_S"] == "300"
    assert pod["terminationGracePeriodSeconds"] >= 300 + main_container(gateway)["lifecycle"]["preStop"]["sleep"][
        "seconds"]


def test_gateway_settings_and_service(rendered: dict[str, list[dict[str, Any]]], helm: Helm, tmp_path: Path) -> None:
    routes = {"+15550100": "support"}  # the profiles themselves live on the orchestrator
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({"gateway": {"enabled": True, "settings": {"profileRoutes": json.dumps(routes)}}}))
    env = env_of(main_container(deployments(helm.render("cpu", values=[path]))["gateway"]))
    assert json.loads(env["VOXGRID_GATEWAY_PROFILE_ROUTES"]) == routes
    objects = rendered["gateway-tls-k8s-discovery"]
    env = env_of(main_container(deployments(objects)["gateway"]))
    assert env["VOXGRID_GATEWAY_DEFAULT_PROFILE"] == "support"
    assert env["VOXGRID_GATEWAY_TLS_CERT_FILE"] == "/var/run/voxgrid/tls/tls.crt"
    (service,) = [s for s in objects if s["kind"] == "Service" and component(s) == "gateway"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8080, "http"), "metrics": (9090, "metrics")}
    assert service["spec"]["selector"].items() <= deployments(objects)["gateway"]["spec"]["template"]["metadata"][
        "labels"].items()
    assert service["metadata"]["labels"]["voxgrid.io/metrics"] == "true", "scraped like every other service"


def test_gateway_auth_token_is_accepted_by_the_orchestrator(
    rendered: dict[str, list[dict[str, Any]]], helm: Helm
) -> None:
    import base64

    (job,) = by_kind(rendered["gateway"], "Job").values()
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["GATEWAY"] == "true"
    objects = helm.render("cpu", sets=["gateway.enabled=true", "auth.tokens[0]=cccccccccccccccccccc",
                                       "auth.gatewayToken=gggggggggggggggggggg"])
    (secret,) = by_kind(objects, "Secret").values()
    own = base64.b64decode(secret["data"]["gateway-token"]).decode()
    client, last = base64.b64decode(secret["data"]["tokens"]).decode().splitlines()
    assert last == own == "gggggggggggggggggggg" and client != own
    c = main_container(deployments(objects)["gateway"])
    (token,) = [e for e in c["env"] if e["name"] == "VOXGRID_GATEWAY_ORCHESTRATOR_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "gateway-token"}
    assert env_of(c)["VOXGRID_GATEWAY_AUTH_TOKEN_FILE"] == "/var/run/voxgrid/auth/tokens"
    pod = deployments(objects)["gateway"]["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "auth"]
    assert vol["secret"]["items"] == [{"key": "tokens", "path": "tokens"}], "callers use the clients' tokens"


def test_gateway_ingress_pdb_and_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["gateway"]
    deps = deployments(objects)
    gw_labels = deps["gateway"]["spec"]["template"]["metadata"]["labels"]
    (ingress,) = by_kind(objects, "Ingress").values()
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "vg-voxgrid-gateway", "port": {"name": "http"}}
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert ingress["spec"]["tls"][0]["secretName"] == "vg-tls"
    pdbs = {component(p): p for p in objects if p["kind"] == "PodDisruptionBudget"}
    assert pdbs["gateway"]["spec"]["selector"]["matchLabels"].items() <= gw_labels.items()
    policies = {component(p): p for p in objects if p["kind"] == "NetworkPolicy"}
    gw = policies["gateway"]["spec"]
    assert gw["policyTypes"] == ["Ingress", "Egress"]
    http_rule, metrics_rule = gw["ingress"]
    assert http_rule["ports"] == [{"port": 8080, "protocol": "TCP"}] and "from" not in http_rule
    assert metrics_rule == policies["orchestrator"]["spec"]["ingress"][1], "scraped like every other service"
    dns, orch = gw["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert orch["ports"] == [{"port": 50051, "protocol": "TCP"}]
    (peer,) = orch["to"]
    orch_labels = deps["orchestrator"]["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= orch_labels.items()
    # clientsFrom restricts who reaches the orchestrator; this release's gateway stays allowed.
    grpc_rule = policies["orchestrator"]["spec"]["ingress"][0]
    selectors = [p["podSelector"]["matchLabels"] for p in grpc_rule["from"]]
    assert {"role": "client"} in selectors
    assert any(sel.items() <= gw_labels.items() for sel in selectors)


def test_profiles_configmap_adapters_and_voices_volumes(rendered: dict[str, list[dict[str, Any]]], helm: Helm) -> None:
    objects = rendered["profiles-adapters-voices"]
    deps = deployments(objects)
    (profiles,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-profiles")]
    # (--set leaves 1.1 a string, which protobuf JSON reads as a number.)
    assert yaml.safe_load(profiles["data"]["profiles.yaml"]) == {
        "support": {"description": "Support line", "voice": "acme", "adapter": "support", "speed": "1.1"}}
    orch = deps["orchestrator"]["spec"]["template"]["spec"]
    env = env_of(main_container(deps["orchestrator"]))
    assert env["VOXGRID_ORCHESTRATOR_PROFILES_FILE"] == "/etc/voxgrid/profiles/profiles.yaml"
    mounts = {m["name"]: m for m in main_container(deps["orchestrator"])["volumeMounts"]}
    assert mounts["profiles"]["mountPath"] == "/etc/voxgrid/profiles" and "subPath" not in mounts["profiles"]
    assert {"name": "profiles", "configMap": {"name": profiles["metadata"]["name"]}} in orch["volumes"]
    # The LLM's adapters from a claim the chart makes, the TTS's voices from a node folder, both read-only.
    (claim,) = [o for o in objects
                if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"].endswith("-llm-adapters")]
    llm = deps["llm"]["spec"]["template"]["spec"]
    assert {"name": "adapters", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"], "readOnly": True}} \
        in llm["volumes"]
    assert env_of(main_container(deps["llm"]))["VOXGRID_LLM_ADAPTERS_DIR"] == "/adapters"
    tts = deps["tts"]["spec"]["template"]["spec"]
    assert {"name": "voices", "hostPath": {"path": "/srv/voxgrid/voices", "type": "Directory"}} in tts["volumes"]
    assert env_of(main_container(deps["tts"]))["VOXGRID_TTS_VOICES_DIR"] == "/voices"
    assert {"name": "voices", "mountPath": "/voices", "readOnly": True} in main_container(deps["tts"])["volumeMounts"]
    # Off by default: no ConfigMap, no volumes, no settings paths.
    default = rendered["default"]
    assert not [o for o in default if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-profiles")]
    assert "VOXGRID_LLM_ADAPTERS_DIR" not in env_of(main_container(deployments(default)["llm"]))
    # A path the chart mounts is not a setting too (one home), and a hostPath needs its path.
    assert "adaptersDir" in helm.refusal("cpu", sets=["llm.settings.adaptersDir=/x"])
    assert "hostPath" in helm.refusal("cpu", sets=["tts.voices.type=hostPath"])


def test_hybrid_overlay_serves_a_speech_in_model_and_a_hybrid_profile(helm: Helm) -> None:
    """values-hybrid.yaml over a GPU profile: the LLM deployment loads a speech-in model with its audio limit,
    the orchestrator bounds the utterance it keeps, and a `hybrid` profile selects the mode."""
    chart = Path(__file__).resolve().parents[2] / "helm" / "voxgrid"
    objects = helm.render("h100", values=[chart / "values-hybrid.yaml"])
    for obj in objects:
        validate_strict(obj, KUBE_VERSIONS[-1])
    deps = deployments(objects)
    llm = env_of(main_container(deps["llm"]))
    # (prefetched into the model cache by the init container, loaded from there)
    assert "Qwen/Qwen2-Audio-7B-Instruct" in llm["VOXGRID_LLM_MODEL"] and llm["VOXGRID_LLM_ENGINE"] == "vllm"
    assert float(llm["VOXGRID_LLM_MAX_AUDIO_S"]) == 30
    assert float(env_of(main_container(deps["orchestrator"]))["VOXGRID_ORCHESTRATOR_MAX_UTTERANCE_AUDIO_S"]) == 30
    (profiles,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-profiles")]
    assert yaml.safe_load(profiles["data"]["profiles.yaml"])["hybrid"]["mode"] == "AGENT_MODE_HYBRID"
