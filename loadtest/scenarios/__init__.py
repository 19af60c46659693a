"""Reliability scenarios on the local stack; run each as `python -m voxgrid.loadtest.scenarios.<name>`."""
