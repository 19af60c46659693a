"""Values helm must refuse, each with a message that says what to change (schema or `fail`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.chart import Helm, write_values

# name -> (profile, --set items, fragments the error must contain)
REFUSED: dict[str, tuple[str | None, list[str], list[str]]] = {
    "llm-without-model": (None, ["llm.settings.model="], ["llm is enabled but llm.settings.model is empty"]),
    "stt-without-model-on-cpu": ("cpu", ["stt.settings.model="], ["stt is enabled but stt.settings.model is empty"]),
    "duplex-enabled-without-model": (None, ["duplex.enabled=true", "duplex.settings.model="],
                                     ["duplex is enabled but duplex.settings.model is empty"]),
    "vllm-with-zero-gpus": (None, ["llm.gpu=0"], ["llm runs a GPU engine (engine vllm) but llm.gpu is 0"]),
    "cuda-stt-with-zero-gpus": ("h100", ["stt.gpu=0"], ["stt runs a GPU engine (device cuda) but stt.gpu is 0"]),
    "cuda-on-cpu-profile": ("cpu", ["tts.settings.device=cuda"], ["tts runs a GPU engine", "tts.gpu to 1"]),
    "transformers-on-cuda-with-zero-gpus": ("cpu", ["llm.settings.device=cuda"],
                                            ["llm runs a GPU engine (device cuda) but llm.gpu is 0"]),
    "duplex-auto-device-is-cpu-without-gpus": ("h100", ["duplex.settings.device=cuda:1", "duplex.gpu=0"],
                                               ["duplex runs a GPU engine (device cuda:1)"]),
    "backend-auth-without-orchestrator": (None, ["auth.backends=true", "orchestrator.enabled=false"],
                                          ["auth.backends needs the orchestrator"]),
    "tensor-parallel-above-gpus": ("a100", ["llm.gpu=1"], ["tensorParallelSize=2", "raise llm.gpu to 2"]),
    "grace-shorter-than-drain": (None, ["orchestrator.terminationGracePeriodSeconds=60"],
                                 ["orchestrator.terminationGracePeriodSeconds=60 is shorter", "310"]),
    "half-a-pipeline": (None, ["tts.enabled=false"], ["pipeline mode needs stt, llm and tts together"]),
    "no-backend-at-all": (None, ["stt.enabled=false", "llm.enabled=false", "tts.enabled=false"],
                          ["the orchestrator has no backend"]),
    "tls-without-secret": (None, ["tls.enabled=true"], ["tls.secretName is empty"]),
    "grpcroute-without-gateway": (None, ["orchestrator.grpcRoute.enabled=true"], ["grpcRoute.parentRefs"]),
    "duplex-sessions-above-slots": ("h100", ["duplex.maxSessions=17"], ["more than duplex.settings.slots=16"]),
    "bad-discovery-mode": (None, ["orchestrator.discovery=consul"], ["orchestrator", "discovery"]),
    "bad-external-backend": (None, ["orchestrator.externalBackends.llm=http://llm:8000"], ["externalBackends", "llm"]),
    "bad-engine": (None, ["llm.settings.engine=llama.cpp"], ["llm", "engine"]),
    "gateway-without-orchestrator": (None, ["gateway.enabled=true", "orchestrator.enabled=false",
                                             "stt.enabled=false", "llm.enabled=false", "tts.enabled=false"],
                                     ["gateway.enabled needs an orchestrator"]),
    "gateway-bad-orchestrator-backends": (None, ["gateway.enabled=true", "gateway.orchestratorBackends=orch:50051"],
                                          ["gateway", "orchestratorBackends"]),
    "gateway-unknown-setting": (None, ["gateway.enabled=true", "gateway.settings.orchestratorToken=x"],
                                ["gateway", "orchestratorToken"]),
    "gateway-ingress-without-host": (None, ["gateway.enabled=true", "gateway.ingress.enabled=true",
                                            "gateway.ingress.host="], ["gateway.ingress.host"]),
    # First install on a real cluster: volumes, probes, exposure, rollouts, gated models, tokens.
    "rwo-shared-cache-with-spread": (None, ["modelCache.type=pvc", "modelCache.accessModes[0]=ReadWriteOnce"],
                                     ["the shared claim is ReadWriteOnce", "modelCache.type=perPod"]),
    "rwo-existing-claim-with-autoscaling": ("h100", ["modelCache.type=pvc", "modelCache.existingClaim=weights",
                                                     "modelCache.accessModes[0]=ReadWriteOncePod"],
                                            ["ReadWriteOncePod", "llm up to 9"]),
    "tls-probe-on-the-tls-port": ("h100", ["llm.probes.readiness.grpc.port=50051"],
                                  ["llm.probes.readiness", "kubelet's gRPC probe is plaintext", "50052"]),
    "load-balancer-without-tls": ("cpu", ["orchestrator.service.type=LoadBalancer"],
                                  ["exposes the orchestrator outside the cluster without TLS",
                                   "tls.allowPlaintextExposure"]),
    "h100-with-tls-turned-off": ("h100", ["tls.enabled=false"], ["orchestrator.service.type=LoadBalancer"]),
    "ingress-without-tls": ("cpu", ["orchestrator.ingress.enabled=true"],
                            ["orchestrator.ingress has no tlsSecretName"]),
    "gateway-ingress-without-tls": ("cpu", ["gateway.enabled=true", "gateway.ingress.enabled=true"],
                                    ["gateway.ingress has no tlsSecretName"]),
    "rollout-drops-the-last-replica": (None, ["stt.rollout.maxSurge=0", "stt.rollout.maxUnavailable=1"],
                                       ["stt.rollout.maxUnavailable=1 with 1 replica(s)", "allowZeroReady"]),
    "rollout-that-cannot-move": (None, ["llm.rollout.maxSurge=0"], ["maxSurge and maxUnavailable are both 0"]),
    "gated-model-without-token": (None, ["llm.settings.model=meta-llama/Llama-3.1-8B-Instruct"],
                                  ["is a gated model", "modelCache.hfTokenSecret"]),
    "tokens-without-gateway-token": (None, ["auth.tokens[0]=aaaaaaaaaaaaaaaaaaaa", "gateway.enabled=true"],
                                     ["auth.gatewayToken is empty"]),
    "tokens-without-backend-token": (None, ["auth.tokens[0]=aaaaaaaaaaaaaaaaaaaa", "auth.backends=true"],
                                     ["auth.backendToken is empty"]),
    "autoscaling-min-above-max": (
        None,
        ["stt.autoscaling.enabled=true", "stt.autoscaling.minReplicas=5", "stt.autoscaling.maxReplicas=2"],
        ["minReplicas (5) is above maxReplicas (2)"],
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_a_clear_message(helm: Helm, name: str) -> None:
    profile, sets, fragments = REFUSED[name]
    error = helm.refusal(profile, sets=sets)
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in:\n{error}"


# Values files with wrong types or unknown keys: the strict schema names the field.
BAD_FILES: dict[str, tuple[str, list[str]]] = {
    "max-sessions-as-words": ("stt:\n  maxSessions: many\n", ["/stt/maxSessions", "integer"]),
    "gpu-count-as-string": ("llm:\n  gpu: \"two\"\n", ["/llm/gpu", "integer"]),
    "replicas-negative": ("orchestrator:\n  replicas: -1\n", ["/orchestrator/replicas", "minimum"]),
    "enabled-as-string": ("duplex:\n  enabled: \"yes\"\n", ["/duplex/enabled", "boolean"]),
    "typo-in-key": ("stt:\n  maxSesions: 8\n", ["maxSesions"]),
    "unknown-llm-setting": ("llm:\n  settings:\n    maxModelLength: 4096\n", ["maxModelLength"]),
    "gpu-memory-above-one": ("llm:\n  settings:\n    gpuMemoryUtilization: 1.5\n", ["gpuMemoryUtilization"]),
    "unknown-tts-setting": ("tts:\n  settings:\n    voice: joe\n", ["/tts/settings", "'voice' not allowed"]),
    "chart-managed-setting": ("stt:\n  settings:\n    maxSessions: 4\n", ["/stt/settings", "'maxSessions'"]),
    "vad-threshold-out-of-range": ("stt:\n  settings:\n    vadThreshold: 1.5\n", ["/stt/settings/vadThreshold"]),
    "model-as-number": ("stt:\n  settings:\n    model: 3\n", ["/stt/settings/model", "string"]),
    "bad-cache-type": ("modelCache:\n  type: nfs\n", ["/modelCache/type"]),
    "short-token": ("auth:\n  tokens: [abc]\n", ["/auth/tokens/0"]),
    "unknown-gpu-preset": ("gpu:\n  nodeSelection:\n    preset: aks\n",
                           ["/gpu/nodeSelection/preset", "'gfd', 'gke', 'none'"]),
    # Security contexts, tolerations, volumes, probes: checked against the Kubernetes definitions.
    "pod-security-context-wrong-type": ("podSecurityContext:\n  runAsUser: many\n",
                                        ["/podSecurityContext/runAsUser", "integer"]),
    "container-security-context-typo": ("containerSecurityContext:\n  readOnlyRootFilesytem: true\n",
                                        ["/containerSecurityContext", "readOnlyRootFilesytem"]),
    "capabilities-not-a-list": ("containerSecurityContext:\n  capabilities:\n    drop: ALL\n",
                                ["/containerSecurityContext/capabilities/drop"]),
    "toleration-typo": ("stt:\n  tolerations:\n    - {key: a, efect: NoSchedule}\n", ["/stt/tolerations/0", "efect"]),
    "extra-volume-typo": ("llm:\n  extraVolumes:\n    - {name: x, emptyDirr: {}}\n", ["/llm/extraVolumes/0"]),
    "extra-env-without-name": ("tts:\n  extraEnv:\n    - {value: x}\n", ["/tts/extraEnv/0", "name"]),
    "probe-override-typo": ("orchestrator:\n  probes:\n    readiness: {periodSecond: 3}\n",
                            ["/orchestrator/probes/readiness", "periodSecond"]),
    "spread-constraint-incomplete": ("stt:\n  topologySpreadConstraints:\n    - {maxSkew: 1}\n",
                                     ["/stt/topologySpreadConstraints/0"]),
    "extra-object-without-kind": ("extraObjects:\n  - {apiVersion: v1, metadata: {name: x}}\n",
                                  ["/extraObjects/0", "kind"]),
    "download-path-escapes-the-cache": (
        "tts:\n  download:\n    files: [{url: 'https://x.example/y', path: ../etc/x}]\n",
        ["/tts/download/files/0/path"]),
    "download-over-plain-http": ("tts:\n  download:\n    files: [{url: 'http://x.example/y', path: y}]\n",
                                 ["/tts/download/files/0/url"]),
    "metrics-peer-typo": ("networkPolicy:\n  metricsFrom:\n    - {namespaceSelectr: {}}\n",
                          ["/networkPolicy/metricsFrom/0", "namespaceSelectr"]),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_values_file_is_refused_by_the_schema(helm: Helm, tmp_path: Path, name: str) -> None:
    text, fragments = BAD_FILES[name]
    path = write_values(tmp_path, f"{name}.yaml", text)
    error = helm.refusal(values=[path])
    assert "values don't meet the specifications of the schema" in error or "schema" in error, error
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in:\n{error}"


def test_profiles_themselves_pass_the_schema(helm: Helm) -> None:
    for profile in ("h100", "a100", "cpu"):
        done = helm.template(profile)
        assert done.returncode == 0, done.stderr


def test_settings_schema_matches_the_settings_models() -> None:
    """values.schema.json's <svc>Settings come from the services' pydantic models: regenerate on change."""
    import subprocess
    import sys

    from tests.deploy.chart import REPO_ROOT

    tool = REPO_ROOT / "deploy" / "tools" / "chart_settings.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_definitions_match_kubernetes_validate() -> None:
    """values.schema.json's io.k8s.* definitions come from kubernetes-validate's schemas: regenerate on change."""
    import subprocess
    import sys

    from tests.deploy.chart import REPO_ROOT

    tool = REPO_ROOT / "deploy" / "tools" / "chart_k8s_schema.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True, timeout=120)
    if "missing: install a kubernetes-validate" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout + done.stderr
