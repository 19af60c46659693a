"""What `pip install voxgrid` puts into site-packages: one import namespace, nothing generic at the top."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(REPO_ROOT)],
        check=True, capture_output=True, cwd=out,
    )
    (wheel,) = out.glob("voxgrid-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_everything_installs_under_the_voxgrid_namespace(wheel_names: list[str]) -> None:
    tops = {name.split("/", 1)[0] for name in wheel_names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"voxgrid"}


def test_the_top_level_folders_map_into_the_package(wheel_names: list[str]) -> None:
    for module in ("voxgrid/services/llm/app.py", "voxgrid/services/stt/engines/faster_whisper.py",
                   "voxgrid/orchestrator/session.py", "voxgrid/gateway/app.py", "voxgrid/loadtest/cli.py",
                   "voxgrid/loadtest/scenarios/soak.py", "voxgrid/server/chassis.py", "voxgrid/v1/agent_pb2.py"):
        assert module in wheel_names, module


def test_the_gateway_page_ships_as_package_data(wheel_names: list[str]) -> None:
    """The gateway serves its browser page from the installed package."""
    assert any(name.startswith("voxgrid/gateway/static/") and name.endswith(".html") for name in wheel_names)


def test_tests_and_benchmarks_are_not_installed(wheel_names: list[str]) -> None:
    assert not any(name.startswith(("voxgrid/tests/", "voxgrid/benchmarks/", "tests/", "benchmarks/"))
                   for name in wheel_names)


def test_the_load_tester_does_not_import_the_benchmarks() -> None:
    sources = [p.read_text() for p in (REPO_ROOT / "loadtest").rglob("*.py")]
    assert not any("from benchmarks" in s or "import benchmarks" in s for s in sources)
