"""The GPU run harness (``gpu_run.py`` and its stages), its wheels and results tools; not installed."""
