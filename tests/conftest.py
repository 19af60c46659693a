"""Fixtures shared by every test package: loopback servers, speech made on the spot, GPU detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxgrid.speech import FliteMissing, synthesize


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
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
