"""The loop both trainers share (``training/loop_trainer.py``): what it refuses and what the
protocols may not pull in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_trainer

from mlr_registry.errors import ConfigError


@pytest.mark.parametrize("gin_file, trainer, example", [
    ("gin/smoke/atari_baseline.gin", "atari100k", "@agents.rainbow"),
    ("gin/smoke/dmc_baseline.gin", "dmc", "@agents.sac"),
])
def test_a_trainer_without_an_agent_binding_names_the_binding(gin_file, trainer, example):
    """No trainer falls back to an algorithm of its own: the gin file names the agent."""
    message = f"trainers.{trainer}.agent is not set; bind it, e.g. trainers.{trainer}.agent = {example}"
    with pytest.raises(ConfigError, match=message):
        with tiny_trainer(gin_file, bindings=(f"trainers.{trainer}.agent = None",)):
            pass


def test_the_atari_env_and_the_trainers_import_neither_the_report_nor_an_agent():
    """The env reads Table 1's scores from a neutral module, not the report layer; the trainers
    import no agent (the gin files name it)."""
    code = ("import sys; import mlr_registry.envs.atari, mlr_registry.training.atari100k, "
            "mlr_registry.training.dmc; "
            "print(sorted(m for m in sys.modules if m.startswith(('mlr_registry.report', 'mlr_registry.agents'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"
