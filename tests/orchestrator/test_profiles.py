"""Agent profiles served by the orchestrator: parsing, merging under a session, reload, ListProfiles, refusals."""

from __future__ import annotations

import os

import grpc
import pytest
from voxgrid.orchestrator.client import AgentCall, list_profiles, session_config
from voxgrid.orchestrator.profiles import ProfileError, ProfileStore, merge, parse_profiles

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeLlm, FakeTts
from voxgrid.v1 import agent_pb2, audio_pb2

PROFILES = """
support:
  description: Acme support line
  systemPrompt: You are Acme support.
  greeting: Acme support, how can I help?
  voice: fake-voice
  adapter: support
  speed: 1.25
  sampling: {temperature: 0.2, topP: 0.9}
sales:
  description: Sales
  systemPrompt: You sell.
"""


def write(path, text: str) -> None:
    path.write_text(text)
    st = os.stat(path)  # a new mtime even within the file system's timestamp granularity
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_profile_file_is_checked_whole_and_errors_name_the_profile_and_field() -> None:
    profiles = parse_profiles(PROFILES, "test")
    assert sorted(profiles) == ["sales", "support"]
    assert profiles["support"].description == "Acme support line" and profiles["support"].config.speed == 1.25
    assert parse_profiles('{"x": {"greeting": ""}}', "json").get("x").config.HasField("greeting")  # JSON works too
    for text, message in [
        ("x: {persona: hi}", "profile 'x': .*no field named \"persona\""),
        ("x: {inputFormat: {sampleRateHz: 8000}}", "profile 'x' sets input_format"),
        ("x: {speed: 3}", "profile 'x': speed 3 is out of range"),
        ("x: {sampling: {temperature: 9}}", "profile 'x': sampling.temperature 9"),
        ("x: [1, 2]", "profile 'x' must be a mapping"),
        ("- a\n- b", "must map profile names"),
        ("x: {a: [}", "neither valid YAML nor JSON"),
    ]:
        with pytest.raises(ProfileError, match=message):
            parse_profiles(text, "test")


def test_session_fields_override_the_profile_with_explicit_presence() -> None:
    profile = parse_profiles(PROFILES, "test")["support"].config
    profile.tools.add(schema=audio_pb2.ToolSchema(name="orders"), http_url="http://127.0.0.1:9/")
    session = agent_pb2.SessionConfig(greeting="", voice="other")
    session.sampling.temperature = 0.7
    merged = merge(profile, session)
    assert merged.greeting == "" and merged.HasField("greeting")  # "" said explicitly: no greeting
    assert merged.voice == "other" and merged.system_prompt == "You are Acme support."
    assert merged.sampling.temperature == pytest.approx(0.7) and merged.sampling.top_p == pytest.approx(0.9)
    assert [t.schema.name for t in merged.tools] == ["orders"]
    session.tools.add(schema=audio_pb2.ToolSchema(name="weather"), http_url="http://127.0.0.1:9/")
    assert [t.schema.name for t in merge(profile, session).tools] == ["weather"]  # a list replaces, never appends


def test_a_store_refuses_a_missing_file_or_default_at_start(tmp_path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        ProfileStore(tmp_path / "nope.yaml").load()
    f = tmp_path / "p.yaml"
    write(f, PROFILES)
    with pytest.raises(ProfileError, match="default_profile 'nope' is not among the profiles \\(sales, support\\)"):
        ProfileStore(f, "nope").load()


def spoken(call: AgentCall, turn_id: int) -> str:
    """The text the agent's audio of one turn speaks, from its marks."""
    marks = {(a.mark.text_start, a.mark.text) for a in call.record.of("agent_audio") if a.turn_id == turn_id}
    return "".join(text for _, text in sorted(marks))


async def first_turn(stack, config: agent_pb2.SessionConfig, greeting: bool) -> AgentCall:
    async with AgentCall(stack.stub, config) as call:
        if greeting:
            await call.wait_for(call.turn_over(1))
        await call.stream(tone(1.0), RATE)
        await call.silence(0.5)
        await call.wait_for(call.turn_over(2 if greeting else 1))
        return call


@pytest.mark.e2e
async def test_a_profile_chosen_by_name_overridden_per_field_and_reloaded_while_serving(
    make_stack, tmp_path, capsys
) -> None:
    from voxgrid.orchestrator.talk import print_profiles

    f = tmp_path / "profiles.yaml"
    write(f, PROFILES)
    llm, tts = FakeLlm(), FakeTts()
    llm.adapters = ("support",)
    async with make_stack(["hello", "hello again", "and again"], llm=llm, tts=tts, profiles_file=f) as stack:
        # The profile as it is: persona, greeting, voice and speed, adapter, sampling.
        call = await first_turn(stack, session_config(mode=0, profile="support"), greeting=True)
        assert spoken(call, 1) == "Acme support, how can I help?"
        assert stack.llm.requests[-1].messages[0].content == "You are Acme support."
        assert stack.llm.requests[-1].sampling.temperature == pytest.approx(0.2)
        assert stack.llm.configs[-1].adapter == "support" and tts.configs[-1].voice == "fake-voice"
        assert tts.configs[-1].speed == pytest.approx(1.25)
        # Overridden per field: no greeting (set to ""), another persona, the base model (adapter "").
        n = len(stack.llm.requests)
        call = await first_turn(stack, session_config(profile="support", greeting="", system_prompt="Be brief.",
                                                      adapter=""), greeting=False)
        assert spoken(call, 1).startswith("You said")  # no greeting: turn 1 answers the caller
        assert stack.llm.requests[n].messages[0].content == "Be brief."
        assert stack.llm.configs[-1].adapter == ""
        # The file changes while the orchestrator runs: the next session gets the new profile, no restart.
        write(f, PROFILES.replace("You are Acme support.", "You are the new Acme support.")
              .replace("  greeting: Acme support, how can I help?\n", ""))
        n = len(stack.llm.requests)
        await first_turn(stack, session_config(profile="support"), greeting=False)
        assert stack.llm.requests[n].messages[0].content == "You are the new Acme support."
        # A broken edit keeps the last good profiles (and says so in the log) instead of refusing every call.
        write(f, "support: {persona: x}\n")
        listed = await list_profiles(stack.stub)
        assert [(p.name, p.description) for p in listed.profiles] == [("sales", "Sales"),
                                                                       ("support", "Acme support line")]
        support = listed.profiles[1]
        assert support.voice == "fake-voice" and support.adapter == "support"
        print_profiles(listed)  # voxgrid talk --list-profiles
        assert "support: Acme support line [mode AGENT_MODE_PIPELINE, voice fake-voice, language en, adapter " \
            "support]" in capsys.readouterr().out


@pytest.mark.e2e
async def test_unknown_profile_voice_or_adapter_is_refused_naming_what_exists(make_stack, tmp_path) -> None:
    f = tmp_path / "profiles.yaml"
    write(f, PROFILES + "robot:\n  voice: robo\nlora:\n  adapter: legal\n")
    llm = FakeLlm()
    llm.adapters = ("support",)
    async with make_stack([], llm=llm, profiles_file=f) as stack:
        for config, message in [
            (session_config(profile="nope"), "profile 'nope' is unknown: use one of lora, robot, sales, support"),
            (session_config(profile="robot"), "voice 'robo' is unknown; available: fake-voice"),
            (session_config(profile="lora"), "adapter 'legal' is not served by the LLM replicas; adapters: support"),
            (session_config(profile="sales", speed=4.0), "speed 4 is out of range [0.5, 2.0]"),
        ]:
            async with AgentCall(stack.stub, config) as call:
                await call.done.wait()
                assert call.error is not None and call.error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in call.error.details()
        assert stack.llm.requests == [] and stack.llm.configs == []  # refused before any stage was opened
