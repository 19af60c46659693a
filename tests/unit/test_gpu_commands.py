"""`make test-gpu` and deploy/gpu-envs.sh, checked without a GPU: what they would install and run.

The GPU itself is only on GPU hosts; what can go wrong before it is reached is checked here: an unpinned
torch or vLLM (GBs of whatever is newest), onnxruntime shadowing onnxruntime-gpu, and a gpu test that no
command runs, or that runs in a venv without its engine.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "gpu-envs.sh"


def dry_run() -> list[list[str]]:
    env = {**os.environ, "DRY_RUN": "1"}
    for name in ("GPU_VENV", "VLLM_GPU_VENV", "DUPLEX_GPU_VENV", "TORCH_INDEX_URL"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in done.stdout.splitlines() if line and not line.startswith("==")]


def installs(plan: list[list[str]], venv: str) -> list[str]:
    """Requirement arguments of every `pip install` into `venv`, in order."""
    out = []
    for cmd in plan:
        if cmd[0] == f"{venv}/bin/python" and cmd[1:4] == ["-m", "pip", "install"]:
            out += [a for a in cmd[4:] if not a.startswith("-") and a != "."]
    return out


def test_every_heavy_package_is_pinned_in_every_venv() -> None:
    plan = dry_run()
    for venv in (".venv-gpu", ".venv-gpu-vllm", ".venv-gpu-duplex"):
        for requirement in installs(plan, venv):
            name = re.split(r"[\[=<>]", requirement)[0]
            if name in ("torch", "vllm", "onnxruntime-gpu", "nvidia-cublas-cu12", "peft"):
                assert "==" in requirement, f"{venv}: {requirement} is not pinned"
    assert "torch==2.13.0" in installs(plan, ".venv-gpu")
    assert "vllm==0.33.0" in installs(plan, ".venv-gpu-vllm")
    assert not [r for r in installs(plan, ".venv-gpu-vllm") if r.startswith("torch")]  # vLLM brings its own
    duplex = next(cmd for cmd in plan if "deploy/duplex-env.sh" in cmd)
    assert "TORCH_SPEC=torch==2.13.0" in duplex and duplex[-1] == ".venv-gpu-duplex"


def test_onnxruntime_goes_before_onnxruntime_gpu_comes() -> None:
    plan = [" ".join(cmd) for cmd in dry_run()]
    uninstall = next(i for i, c in enumerate(plan) if "pip uninstall" in c and c.endswith("onnxruntime"))
    gpu = next(i for i, c in enumerate(plan) if "onnxruntime-gpu" in c and "pip install" in c)
    kokoro = next(i for i, c in enumerate(plan) if "tts-kokoro" in c)
    assert kokoro < uninstall < gpu


def test_script_refuses_an_unknown_environment_and_explains_itself() -> None:
    bad = subprocess.run(["bash", str(SCRIPT), "gpu"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "main, vllm or duplex" in bad.stderr
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "TORCH_INDEX_URL" in usage.stdout and "DRY_RUN" in usage.stdout


def pytest_commands(target: str) -> list[tuple[str, list[str], list[str]]]:
    """(venv, paths, ignored paths) of each pytest command `make -n TARGET` prints."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True)
    commands = []
    for line in done.stdout.splitlines():
        if " -m pytest " not in line:
            continue
        words = shlex.split(line.split(" -m pytest ", 1)[0])[-1:] + shlex.split(line.split(" -m pytest ", 1)[1])
        venv = words[0].split("/bin/")[0]
        paths = [w for w in words[1:] if w.startswith("tests")]
        ignored = [w.split("=", 1)[1] for w in words if w.startswith("--ignore=")]
        assert "gpu" in words[words.index("-m") + 1]
        commands.append((venv, paths, ignored))
    return commands


def runs(command: tuple[str, list[str], list[str]], test_file: Path) -> bool:
    _, paths, ignored = command
    rel = test_file.relative_to(ROOT).as_posix()
    inside = any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in paths)
    return inside and not any(rel == i or rel.startswith(i.rstrip("/") + "/") for i in ignored)


def test_make_test_gpu_runs_every_gpu_test_in_the_venv_of_its_engine() -> None:
    commands = pytest_commands("test-gpu")
    marked = re.compile(r"pytest\.mark\.gpu\b")
    gpu_files = [p for p in sorted((ROOT / "tests").rglob("test_*.py")) if marked.search(p.read_text())]
    assert len(gpu_files) >= 4
    for test_file in gpu_files:
        venvs = {c[0] for c in commands if runs(c, test_file)}
        text = test_file.read_text()
        if "tests/duplex/" in test_file.as_posix():
            expected = ".venv-gpu-duplex"
        elif "vllm" in text:
            expected = ".venv-gpu-vllm"
        else:
            expected = ".venv-gpu"
        assert expected in venvs, f"{test_file.name}: run in {venvs or 'no venv'}, needs {expected}"
        assert not ("tests/duplex/" in test_file.as_posix() and venvs - {expected}), test_file.name
