"""Small pure pieces of the orchestrator: context window, knowledge ranking, state machine, heard text."""

from __future__ import annotations

import pytest
from voxgrid.orchestrator.context import Conversation, Message
from voxgrid.orchestrator.knowledge import KnowledgeBase, load_collections
from voxgrid.orchestrator.playout import Chunk, Playout
from voxgrid.orchestrator.state import IllegalTransition, State, StateMachine
from voxgrid.orchestrator.turn_taking import is_backchannel
from voxgrid.orchestrator.turns import cut_at_word

from voxgrid.v1 import audio_pb2, llm_pb2


def test_window_keeps_the_system_prompt_and_the_newest_turns_within_budget() -> None:
    conv = Conversation("You are terse.", max_history_tokens=60, summarize_evicted=True)
    for i in range(10):
        conv.add(Message("user", f"Question number {i} about trains and timetables?"))
        conv.add(Message("assistant", f"Answer number {i}. It leaves at nine."))
    msgs = conv.messages()
    assert msgs[0].role == llm_pb2.ROLE_SYSTEM and msgs[0].content.startswith("You are terse.")
    assert conv.history_tokens() <= 60
    assert msgs[-1].content == "Answer number 9. It leaves at nine."
    assert conv.evicted_turns > 0
    assert "Question number 0 about trains" in msgs[0].content  # the summary keeps the gist
    assert all(m.role != llm_pb2.ROLE_TOOL for m in msgs[1:2])  # never starts on an orphan tool result


def test_unanswered_user_turns_merge() -> None:
    conv = Conversation("s", 1000)
    conv.add(Message("user", "I want to book"))
    assert conv.append_to_last_user("a table for two")
    assert [m.content for m in conv.messages()[1:]] == ["I want to book a table for two"]


def test_knowledge_ranks_the_relevant_passage_first(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("Refunds\n\nRefunds are paid within five days.\n\nDelivery takes two weeks.")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "b.md").write_text("The shop opens at nine.")
    cols = load_collections(tmp_path)
    assert set(cols) == {"default", "shop"}
    assert cols["default"].search("how long until refunds are paid")[0].text == "Refunds are paid within five days."
    assert KnowledgeBase([]).search("anything") == []


def test_state_machine_records_transitions_and_refuses_illegal_ones() -> None:
    sm = StateMachine()
    sm.to(State.USER_SPEAKING, "vad")
    sm.to(State.THINKING, "final")
    sm.to(State.AGENT_SPEAKING, "audio")
    sm.to(State.INTERRUPTED, "barge-in")
    assert [t.dst for t in sm.transitions] == [State.USER_SPEAKING, State.THINKING, State.AGENT_SPEAKING,
                                               State.INTERRUPTED]
    assert all(a.at <= b.at for a, b in zip(sm.transitions, list(sm.transitions)[1:], strict=False))
    with pytest.raises(IllegalTransition):
        sm.to(State.CALLING_TOOL, "nonsense")


def test_heard_text_follows_marks_and_cuts_at_words() -> None:
    text = "Paris is the capital, and it is lovely."
    marks = [audio_pb2.SpeechMark(text_start=0, text_end=21, audio_offset_ms=0, audio_duration_ms=1000),
             audio_pb2.SpeechMark(text_start=21, text_end=len(text), audio_offset_ms=1000, audio_duration_ms=1000)]
    p = Playout.__new__(Playout)  # bookkeeping only, no sender task
    p.sent = [Chunk(1, b"", 500, marks[0], 0, 0, 0), Chunk(1, b"", 500, marks[0], 500, 0, 500),
              Chunk(1, b"", 500, marks[1], 1000, 0, 1000)]
    assert p.heard_chars(1000) == 21
    assert cut_at_word(text, p.heard_chars(1000)) == "Paris is the capital,"
    assert cut_at_word(text, p.heard_chars(500)) == "Paris is"
    assert cut_at_word(text, p.heard_chars(1500)).startswith("Paris is the capital, and")
    assert p.heard_chars(0) == 0


def test_backchannels() -> None:
    assert is_backchannel("Uh-huh.") and is_backchannel("okay") and not is_backchannel("okay stop")
