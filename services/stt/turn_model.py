"""Semantic end of turn: Pipecat's smart-turn v3 says whether an utterance sounds finished.

The model (BSD-2-Clause, Daily; `smart-turn-v3.2-cpu.onnx`, 8.7 MB) is an audio classifier on whisper
log-mel features of the last 8 s of the utterance: it hears intonation and rhythm, not words, so a caller
who pauses after "a table for ..." sounds unfinished where a fixed silence rule would end the turn.

Where the weights come from (no model hub, ever): `VOXGRID_STT_TURN_MODEL` as a path to an .onnx file;
otherwise the copy inside an installed `pipecat` package (found without importing pipecat); otherwise the
file extracted once from the `pipecat-ai==1.14.0` wheel (`pip download --no-deps`, checked against its
sha256) into `$VOXGRID_CACHE_DIR/models/smart-turn-v3.2/` with the wheel's license text beside it.
`make setup` and the STT image run `python -m voxgrid.services.stt.turn_model` to fill that cache.

Inference (about 50 ms on one CPU core) runs on a thread of its own, never on the event loop and never
queued behind whisper decode batches: a verdict that waits for a decode would arrive after the silence
it is meant to shorten.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from voxgrid.model_cache import build_lock, models_dir

log = logging.getLogger(__name__)

PACKAGED = "smart-turn-v3.2-package"
WHEEL = "pipecat-ai==1.14.0"
ONNX_NAME = "smart-turn-v3.2-cpu.onnx"
WHEEL_MEMBER = f"pipecat/audio/turn/smart_turn/data/{ONNX_NAME}"
LICENSE_MEMBER = "pipecat_ai-1.14.0.dist-info/licenses/LICENSE"
ONNX_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
RATE = 16000
WINDOW_S = 8  # the model hears the last 8 s, zero-padded in front when shorter


class TurnModelUnavailable(RuntimeError):
    """The turn model could not be found or fetched; the message says what to do."""


def cache_dir() -> Path:
    return models_dir() / "smart-turn-v3.2"


def _installed_pipecat_copy() -> Path | None:
    """The model inside an installed pipecat package (its spec only: importing pipecat is slow and noisy)."""
    try:
        spec = importlib.util.find_spec("pipecat")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / WHEEL_MEMBER.removeprefix("pipecat/")
        if path.is_file():
            return path
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_packaged(target: Path | None = None) -> Path:
    """Extract the model (and the wheel's license) from the pipecat-ai wheel into the cache, once."""
    target = target or cache_dir()
    model = target / ONNX_NAME
    with build_lock(target):
        target.mkdir(parents=True, exist_ok=True)
        if model.is_file() and _sha256(model) == ONNX_SHA256:
            return model
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp,
                   WHEEL]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            wheels = sorted(Path(tmp).glob("pipecat_ai-*.whl"))
            if done.returncode != 0 or not wheels:
                raise TurnModelUnavailable(
                    f"could not download {WHEEL} to extract {ONNX_NAME} ({done.stderr.strip()[-300:]}): "
                    "check access to the package index, or set VOXGRID_STT_TURN_MODEL to a local .onnx file")
            with zipfile.ZipFile(wheels[0]) as wheel:
                (Path(tmp) / ONNX_NAME).write_bytes(wheel.read(WHEEL_MEMBER))
                (Path(tmp) / "LICENSE").write_bytes(wheel.read(LICENSE_MEMBER))
            if _sha256(Path(tmp) / ONNX_NAME) != ONNX_SHA256:
                raise TurnModelUnavailable(f"{ONNX_NAME} in {wheels[0].name} does not match its pinned sha256")
            os.replace(Path(tmp) / "LICENSE", target / "LICENSE")
            os.replace(Path(tmp) / ONNX_NAME, model)
    log.info("smart-turn model extracted from %s into %s", WHEEL, target)
    return model


def resolve_turn_model(name: str) -> Path:
    """A local .onnx path as given, else the installed pipecat copy, else the cache (fetched if missing)."""
    if name and name != PACKAGED:
        path = Path(name).expanduser()
        if not path.is_file():
            raise TurnModelUnavailable(f"turn model {name!r} is not a file: give the path of an .onnx file, "
                                       f"or {PACKAGED!r} for the one in the pipecat-ai wheel")
        return path
    return _installed_pipecat_copy() or fetch_packaged()


class SmartTurnModel:
    """The loaded ONNX session plus its feature extractor; `probability` is blocking, call it off the loop."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = max(threads, 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = path
        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                                     sess_options=opts)
        # Whisper's log-mel (80 bins, 8 s): the same numbers as transformers' WhisperFeatureExtractor.
        self._features = FeatureExtractor(feature_size=80, chunk_length=WINDOW_S)

    def features(self, audio: np.ndarray) -> np.ndarray:
        n = WINDOW_S * RATE
        x = np.asarray(audio, dtype=np.float32)[-n:]
        x = np.pad(x, (n - len(x), 0))
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # the model was trained on normalised waveforms
        return np.ascontiguousarray(self._features(x, padding=0)[:, : n // 160], dtype=np.float32)

    def probability(self, audio: np.ndarray) -> float:
        """P(the utterance is complete) for 16 kHz float32 audio ending where the verdict is wanted."""
        logits = self._session.run(None, {"input_features": self.features(audio)[None]})[0]
        return float(np.asarray(logits).reshape(-1)[0])  # the exported graph ends in a sigmoid


class TurnDetector:
    """One model shared by every stream of a replica, with the thread its inferences run on."""

    def __init__(self, model: SmartTurnModel, *, on_inference: Callable[[float], None] | None = None) -> None:
        self.model = model
        self._on_inference = on_inference
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-turn")

    def submit(self, audio: np.ndarray) -> concurrent.futures.Future[float]:
        return self._pool.submit(self._timed, audio)

    def _timed(self, audio: np.ndarray) -> float:
        started = time.perf_counter()
        p = self.model.probability(audio)
        if self._on_inference is not None:
            self._on_inference(time.perf_counter() - started)
        return p

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def main() -> int:
    """`python -m voxgrid.services.stt.turn_model [PATH]`: make sure the model is there, print where."""
    name = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("VOXGRID_STT_TURN_MODEL", PACKAGED)
    try:
        print(resolve_turn_model(name))
    except TurnModelUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
