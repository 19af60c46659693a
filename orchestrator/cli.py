"""Client commands of the orchestrator: `voxgrid talk`."""

from voxgrid.orchestrator.talk import add_commands

__all__ = ["add_commands"]
