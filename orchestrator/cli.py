"""Client commands of the orchestrator: `voxgrid talk`."""

from orchestrator.talk import add_commands

__all__ = ["add_commands"]
