"""Hybrid-mode history: only the newest user turn carries its audio; older ones go as their transcripts."""

from __future__ import annotations

from voxgrid.orchestrator.context import INAUDIBLE, Conversation, Message

from voxgrid.v1 import audio_pb2, llm_pb2

PCM16_16K = audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000)


def clip(seconds: float) -> llm_pb2.AudioClip:
    return llm_pb2.AudioClip(format=PCM16_16K, data=b"\x01\x00" * int(16000 * seconds))


def test_only_the_newest_user_turn_keeps_its_audio() -> None:
    conversation = Conversation("Be brief.", max_history_tokens=10_000)
    conversation.add(Message("user", "book a table", audio=clip(3)))
    conversation.add(Message("assistant", "For how many?"))
    conversation.add(Message("user", "", audio=clip(2)))  # its transcript is not known yet
    conversation.add(Message("assistant", "Sorry?"))
    conversation.add(Message("user", "four people", audio=clip(1)))
    sent = conversation.messages()
    users = [m for m in sent if m.role == llm_pb2.ROLE_USER]
    assert [m.HasField("audio") for m in users] == [False, False, True]
    assert [m.content for m in users] == ["book a table", INAUDIBLE, "four people"]
    assert users[-1].audio.data == clip(1).data
    # What a long call sends stays one utterance of audio, however many audio turns the history holds.
    assert sum(len(m.audio.data) for m in sent) == len(clip(1).data)


def test_a_pending_audio_turn_is_the_newest_and_history_turns_lose_their_audio() -> None:
    conversation = Conversation("Be brief.", max_history_tokens=10_000)
    conversation.add(Message("user", "hello", audio=clip(2)))
    conversation.add(Message("assistant", "Hi!"))
    sent = conversation.messages(pending_audio=clip(1))
    assert [m.role for m in sent] == [llm_pb2.ROLE_SYSTEM, llm_pb2.ROLE_USER, llm_pb2.ROLE_ASSISTANT,
                                      llm_pb2.ROLE_USER]
    assert not sent[1].HasField("audio") and sent[1].content == "hello"
    assert sent[-1].HasField("audio") and sent[-1].content == ""
    # Text-only conversations are unchanged.
    assert not any(m.HasField("audio") for m in conversation.messages(pending_user="and you?"))


def test_the_newest_turn_keeps_audio_even_after_a_tool_exchange() -> None:
    conversation = Conversation("Be brief.", max_history_tokens=10_000)
    conversation.add(Message("user", "", audio=clip(1)))
    conversation.add(Message("assistant", "", tool_calls=[audio_pb2.ToolCall(id="c1", name="lookup")]))
    conversation.add(Message("tool", "42", tool_call_id="c1"))
    sent = conversation.messages()
    assert sent[1].HasField("audio") and sent[1].content == ""
