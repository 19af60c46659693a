"""The real pipeline services with small models, in this process on loopback ports, plus an orchestrator.

Shared by the end-to-end tests of the agent and of the gateway, so both exercise the same stack.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.settings import Settings as OrchestratorSettings

from voxgrid.server.chassis import ServiceServer, start_server


@contextlib.asynccontextmanager
async def real_agent_stack(stt_model: str = "tiny.en-package", **orchestrator_kw: Any
                          ) -> AsyncIterator[tuple[ServiceServer, dict[str, ServiceServer]]]:
    """STT (tiny.en, or `stt_model`), LLM (Qwen2.5 0.5B bf16), TTS (Piper) and an orchestrator over them."""
    from voxgrid.services.llm.app import LlmRuntime, LlmSettings
    from voxgrid.services.stt.app import SttRuntime, SttSettings
    from voxgrid.services.tts.app import TtsRuntime, TtsSettings

    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, ServiceServer] = {}
        for name, runtime_cls, settings in (("stt", SttRuntime, SttSettings(port=0, model=stt_model)),
                                            ("llm", LlmRuntime, LlmSettings(port=0)),
                                            ("tts", TtsRuntime, TtsSettings(port=0))):
            backends[name] = await stack.enter_async_context(start_server(runtime_cls(settings), settings))
        settings = OrchestratorSettings(port=0, **{f"{n}_backends": s.address for n, s in backends.items()},
                                        **orchestrator_kw)
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        yield orch, backends
