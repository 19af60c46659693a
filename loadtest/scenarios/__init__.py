"""Reliability scenarios on the local stack; run each as `python -m loadtest.scenarios.<name>`."""
