"""Example mlr_registry plugin (see pyproject.toml for the entry point)."""
