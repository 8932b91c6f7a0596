"""Sweeps over games, tasks, seeds and gin values on Ray (``python -m mlr_registry.sweep``; see ``cli.py``)."""
