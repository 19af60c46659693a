"""Noise suppression at the audio edge: engines behind one small interface, and the per-session stage.

`NoiseStage` (stage.py) is what a session holds; `create_engine` (engines.py) builds one engine by name.
Nothing here runs by default: a session turns suppression on (agent profile / SessionConfig.edge_audio),
because on competing speech every suppressor measured here made recognition worse (docs/edge-audio.md).
"""

from voxgrid.noise.engines import DEFAULT_ENGINE, ENGINES, NoiseEngine, NoiseEngineUnavailable, create_engine
from voxgrid.noise.stage import NoiseStage

__all__ = ["DEFAULT_ENGINE", "ENGINES", "NoiseEngine", "NoiseEngineUnavailable", "NoiseStage", "create_engine"]
