"""`voxgrid up --llm-engine`: which engine and interpreter the stack's LLM service gets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from voxgrid import local_stack
from voxgrid.local_stack import llm_python, plan, use_llm_engine


def test_the_transformers_engine_runs_under_this_interpreter() -> None:
    assert llm_python("transformers") == sys.executable
    assert llm_python("vllm", override="/opt/vllm/bin/python") == "/opt/vllm/bin/python"


def test_vllm_runs_from_its_own_venv_when_this_interpreter_lacks_it(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    fake_module = tmp_path / "voxgrid" / "local_stack.py"
    monkeypatch.setattr(local_stack, "__file__", str(fake_module))
    with pytest.raises(RuntimeError, match="make vllm-cpu-env"):
        llm_python("vllm")
    venv_python = tmp_path / ".venv-vllm" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.touch()
    assert llm_python("vllm") == str(venv_python)


def test_only_the_llm_child_changes_engine_and_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXGRID_LLM_ENFORCE_EAGER", raising=False)
    children = plan(["stt", "llm", "orchestrator"], 50051)
    use_llm_engine(children, "vllm", "/venv/bin/python")
    llm = next(c for c in children if c.name == "llm")
    assert llm.env["VOXGRID_LLM_ENGINE"] == "vllm" and llm.python == "/venv/bin/python"
    assert llm.env["VOXGRID_LLM_ENFORCE_EAGER"] == "true"  # vLLM on CPU: no torch.compile at every start
    assert all(c.python == sys.executable and "VOXGRID_LLM_ENGINE" not in c.env for c in children if c is not llm)


def test_an_operator_choice_of_eager_mode_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGRID_LLM_ENFORCE_EAGER", "false")
    children = plan(["llm"], 50051)
    use_llm_engine(children, "vllm", sys.executable)
    assert "VOXGRID_LLM_ENFORCE_EAGER" not in children[0].env  # the child inherits the operator's value
    use_llm_engine(children, "transformers", sys.executable)
    assert children[0].env["VOXGRID_LLM_ENGINE"] == "transformers"


def test_the_local_transformers_engine_runs_float32_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXGRID_LLM_DTYPE", raising=False)
    children = plan(["llm", "tts"], 50051)
    use_llm_engine(children, "transformers", sys.executable)
    assert children[0].env["VOXGRID_LLM_DTYPE"] == "float32" and "VOXGRID_LLM_DTYPE" not in children[1].env
    use_llm_engine(children, "vllm", sys.executable)
    assert "VOXGRID_LLM_DTYPE" not in children[0].env  # vLLM keeps its own default
    monkeypatch.setenv("VOXGRID_LLM_DTYPE", "bfloat16")
    children = plan(["llm"], 50051)
    use_llm_engine(children, "transformers", sys.executable)
    assert "VOXGRID_LLM_DTYPE" not in children[0].env  # the child inherits the operator's bfloat16
