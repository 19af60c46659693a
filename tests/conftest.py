"""Fixtures shared by every test package: loopback servers, speech made on the spot, GPU detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxgrid.gpu import GpuReport, detect_gpus
from voxgrid.speech import FliteMissing, synthesize

# Asked of the driver, not of torch: the main venv's torch is the CPU build even on a GPU host.
GPUS: GpuReport = detect_gpus()


def pytest_report_header(config: pytest.Config) -> str:
    return f"gpu: {GPUS.reason}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GPUS.found:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU ({GPUS.reason}); on a GPU host: make test-gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def synthesize_speech(text: str, path: Path) -> tuple[np.ndarray, int]:
    """Real (synthetic) speech from flite: clear English that whisper transcribes nearly perfectly."""
    try:
        return synthesize(text, path)
    except FliteMissing:
        pytest.skip("flite is not installed (make setup installs it with apt-get)")


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def hello_speech(speech_dir: Path) -> tuple[np.ndarray, int]:
    return synthesize_speech("Hello, I would like to book a table for two tonight.", speech_dir / "hello.wav")
