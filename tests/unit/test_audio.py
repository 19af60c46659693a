"""The audio layer on real speech: codecs within G.711's error bounds, resampling that streams cleanly."""

from __future__ import annotations

import numpy as np
import pytest

from voxgrid import audio
from voxgrid.audio import ALAW, MULAW, PCM16, AudioFormatError, AudioIn, AudioOut, AudioSpec
from voxgrid.v1 import audio_pb2


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    n = min(len(ref), len(test))
    noise = ref[:n] - test[:n]
    return 10 * np.log10(np.sum(ref[:n] ** 2) / max(np.sum(noise**2), 1e-20))


@pytest.mark.parametrize("encoding", [MULAW, ALAW])
def test_g711_round_trip_on_speech_keeps_telephone_quality(hello_speech, encoding) -> None:
    x, rate = hello_speech
    spec = AudioSpec(encoding, rate)
    y = audio.decode(audio.encode(x, spec), spec)
    # G.711 gives ~35-38 dB SNR on speech at normal levels; 30 dB is a safe floor.
    assert snr_db(x, y) > 30


def test_g711_tables_match_the_standard_on_every_code() -> None:
    # Decoding then re-encoding each of the 256 codes must give the same code back (bar mu-law's -0/+0).
    for encoding in (MULAW, ALAW):
        spec = AudioSpec(encoding, 8000)
        codes = bytes(range(256))
        again = audio.encode(audio.decode(codes, spec), spec)
        diff = [i for i in range(256) if codes[i] != again[i]]
        assert diff in ([], [0x7F]), (encoding, diff)


def test_pcm16_round_trip_is_exact() -> None:
    pcm = np.arange(-32768, 32768, 7, dtype="<i2")
    spec = AudioSpec(PCM16, 16000)
    assert audio.encode(audio.decode(pcm.tobytes(), spec), spec) == pcm.tobytes()


def test_partial_sample_is_refused_with_a_useful_message() -> None:
    with pytest.raises(AudioFormatError, match="whole number of PCM16 16000 Hz mono samples"):
        audio.decode(b"\x00\x01\x02", AudioSpec(PCM16, 16000))


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (audio_pb2.AudioFormat(), "format is required"),
        (audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=44100), "44100 is not supported"),
        (audio_pb2.AudioFormat(encoding=7, sample_rate_hz=16000), "encoding 7 is not supported"),
        (audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000, channels=2), "send mono"),
    ],
)
def test_bad_formats_name_what_to_send(fmt, message) -> None:
    with pytest.raises(AudioFormatError, match=message):
        AudioSpec.from_proto(fmt)


def test_streaming_resampler_matches_one_shot_and_keeps_a_tone() -> None:
    rate_in, rate_out = 8000, 16000
    t = np.arange(rate_in) / rate_in
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = audio.StreamResampler(rate_in, rate_out).process(tone, last=True)
    r = audio.StreamResampler(rate_in, rate_out)
    chunks = [r.process(tone[i : i + 160]) for i in range(0, len(tone), 160)] + [r.process(tone[:0], last=True)]
    streamed = np.concatenate(chunks)
    assert abs(len(streamed) - rate_out) <= 2
    assert np.allclose(streamed[: len(whole)], whole[: len(streamed)], atol=1e-4)
    # The tone survives: its power sits at 440 Hz.
    spectrum = np.abs(np.fft.rfft(streamed[:rate_out]))
    assert abs(np.argmax(spectrum) * rate_out / len(streamed[:rate_out]) - 440) < 2


def test_phone_audio_in_and_out_of_a_16k_engine(hello_speech) -> None:
    x, rate = hello_speech
    phone = AudioSpec(MULAW, 8000)
    to_phone = AudioOut(rate, phone)
    wire = to_phone.feed(x) + to_phone.flush()
    assert abs(phone.duration_ms(len(wire)) - 1000 * len(x) / rate) < 25
    into_engine = AudioIn(phone, 16000)
    step = phone.bytes_for_ms(20)
    pieces = [into_engine.feed(wire[i : i + step]) for i in range(0, len(wire), step)] + [into_engine.flush()]
    y = np.concatenate(pieces)
    assert abs(len(y) - 16000 * len(x) / rate) < 40
    assert into_engine.received_ms == pytest.approx(phone.duration_ms(len(wire)))
    # Band-limited to 4 kHz and companded, but the same speech: compare against the reference taken
    # through the same resampling without the codec.
    ref = audio.StreamResampler(8000, 16000).process(audio.StreamResampler(rate, 8000).process(x, last=True), last=True)
    assert snr_db(ref, y) > 25


def test_frame_buffer_hands_out_exact_frames() -> None:
    fb = audio.FrameBuffer(512)
    out = fb.push(np.ones(700, np.float32)) + fb.push(np.ones(400, np.float32))
    assert [len(f) for f in out] == [512, 512] and len(fb) == 76
    assert [len(f) for f in audio.frames(np.ones(1000, np.float32), 512)] == [512, 512]
