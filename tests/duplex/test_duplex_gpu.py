"""The real Moshi 7B architecture (random bf16 weights) slot-batched on a CUDA GPU, with moshi's compiled paths.

One replica for the module: loading and compiling 7B takes a while, and the point is one model serving
every slot. Its conversations are compared with their solo runs through the scheduler and over loopback
gRPC, and the replica must have taken the paths a GPU deployment takes: torch.compile'd modules and CUDA
graphs for the LM and Mimi (a run that silently fell back to eager mode would pass every other check).
Run by `make test-gpu` in .venv-gpu-duplex (moshi with torch's CUDA build).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("moshi", reason="duplex tests need the moshi venv (deploy/duplex-env.sh)")

import torch
from voxgrid.services.duplex.app import DuplexRuntime, Settings
from voxgrid.services.duplex.engines.moshi_engine import MoshiBatchModel

from tests.duplex.conftest import caller_audio, run_whole, tokens
from tests.duplex.test_duplex_e2e import converse, wire_audio
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer, start_server
from voxgrid.v1 import duplex_pb2_grpc

# The first test also loads the replica and compiles it (torch.compile, CUDA graphs): minutes, once.
pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(1800)]
SLOTS = 4


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def replica() -> AsyncIterator[tuple[ServiceServer, DuplexRuntime]]:
    if not torch.cuda.is_available():
        pytest.fail(f"an NVIDIA GPU is present but torch {torch.__version__} in this venv cannot use it: "
                    "run the GPU tests with `make test-gpu` (it builds .venv-gpu-duplex with torch's CUDA build)")
    assert not os.environ.get("NO_TORCH_COMPILE"), "NO_TORCH_COMPILE is set: the compiled paths would not run"
    settings = Settings(port=0, metrics_port=-1, model="random-7b", slots=SLOTS, device="cuda")
    runtime = DuplexRuntime(settings)
    async with start_server(runtime, settings) as server:
        yield server, runtime
    del runtime
    gc.collect()
    torch.cuda.empty_cache()


def model_of(runtime: DuplexRuntime) -> MoshiBatchModel:
    model = runtime.scheduler.model
    assert isinstance(model, MoshiBatchModel)
    return model


async def test_replica_serves_the_7b_architecture_in_bf16_on_the_gpu(replica: Any) -> None:
    model = model_of(replica[1])
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    parameters = sum(p.numel() for p in model.lm.parameters())
    assert parameters > 7e9, f"{parameters / 1e9:.1f} B parameters: not the 7B architecture"
    assert next(model.lm.parameters()).is_cuda and next(model.mimi.parameters()).is_cuda


async def test_sessions_in_one_batch_match_their_solo_runs(replica: Any) -> None:
    scheduler = replica[1].scheduler
    audios = [caller_audio(seed, 12) for seed in range(SLOTS - 1)]
    solo = [await run_whole(scheduler, a) for a in audios]
    together = await asyncio.gather(*(run_whole(scheduler, a) for a in audios))
    assert [tokens(t) for t in together] == [tokens(s) for s in solo]
    assert all(f.step_ms > 0 for f in together[0])


async def test_grpc_streams_get_what_each_gets_alone(replica: Any) -> None:
    server = replica[0]
    a, b = wire_audio(0, 12), wire_audio(1, 12)
    async with channel(server.address) as ch:
        stub = duplex_pb2_grpc.DuplexStub(ch)
        alone_a, alone_b = await converse(stub, a), await converse(stub, b)
        both_a, both_b = await asyncio.gather(converse(stub, a), converse(stub, b))
    assert [f.frame_index for f in both_a] == list(range(12)) and all(f.step_ms > 0 for f in both_a)
    assert [f.text for f in both_a] == [f.text for f in alone_a]
    assert [f.text for f in both_b] == [f.text for f in alone_b]
    assert b"".join(f.data for f in both_a) == b"".join(f.data for f in alone_a)


async def test_the_compiled_paths_ran(replica: Any) -> None:
    """torch.compile produced graphs, and the LM and Mimi steps replay captured CUDA graphs."""
    from torch._dynamo.utils import counters

    model = model_of(replica[1])
    assert counters["stats"]["unique_graphs"] > 0, "torch.compile never produced a graph"
    lm_state = model.lm_gen._streaming_state
    mimi_state = model.mimi._streaming_state
    assert lm_state is not None and mimi_state is not None
    graphed = {
        "LM main step": lm_state.graphed_main,
        "LM depformer step": lm_state.graphed_depth,
        "Mimi encoder": mimi_state.graphed_encoder,
        "Mimi decoder": mimi_state.graphed_decoder,
    }
    not_captured = [name for name, g in graphed.items() if g is None or g.disable or g._graph is None]
    assert not not_captured, f"no CUDA graph captured for: {', '.join(not_captured)}"
