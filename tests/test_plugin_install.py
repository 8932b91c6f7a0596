"""The example plugin in plugins/ is a real distribution: pip installs it, and the registry finds
it through its entry point (no path hacks)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, run_cli


def test_pip_installed_example_plugin_is_discovered(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO / "plugins" / "mlr_example_plugin")],
                   check=True, capture_output=True, text=True, timeout=300)
    assert list(target.glob("mlr_example_plugin-*.dist-info"))
    proc = run_cli(["--list"], cwd=tmp_path, site=target)
    assert proc.returncode == 0, proc.stderr
    assert "checkerboard  [mlr-example-plugin]  gin: maskers.checkerboard" in proc.stdout
    assert "      patch_size = 12" in proc.stdout
    assert "next_latent  [mlr-example-plugin]  gin: losses.next_latent" in proc.stdout
    assert "      lr_warmup = 0" in proc.stdout

    check = """
import torch
from mlr_registry import build, registry
registry.load_all()
m = build("masker", "checkerboard", patch_size=21)
mask = m(torch.zeros(2, 4, 3, 84, 84, dtype=torch.uint8))
assert mask.shape == (2, 4, 1, 84, 84) and mask.dtype == torch.bool
assert mask[0, 0].float().mean() == 0.5 and bool((mask[:, 0] != mask[:, 1]).all())
print("ok", registry.loaded_plugins())
"""
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(target)))
    assert out.returncode == 0, out.stderr
    assert "'example': 'mlr-example-plugin'" in out.stdout
    assert "'example_loss': 'mlr-example-plugin'" in out.stdout
