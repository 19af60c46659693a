"""What the benchmark scripts share: percentiles, tables and service subprocesses live in voxgrid (the load
tester uses them too); benchmarks import them from here."""

from voxgrid.processes import ROOT, ServiceProcess, cpu_seconds, free_port
from voxgrid.tables import pct, table

__all__ = ["ROOT", "ServiceProcess", "cpu_seconds", "free_port", "pct", "table"]
