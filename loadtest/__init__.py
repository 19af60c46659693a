"""Load generator for voxgrid: real-time-paced callers, latency percentiles, capacity search, fault scenarios."""
