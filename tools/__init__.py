"""Data-processing entry points, run as `python -m tools.<name>`."""
