"""How a run is watched and scheduled: the progress bar's switch (a bar on a terminal, nothing in
a log) and torch's thread count (one thread unless the user says otherwise)."""

from __future__ import annotations

import io

import pytest
import torch

from mlr_registry.errors import ConfigError
from mlr_registry.training.common import set_threads
from mlr_registry.training.progress import check_progress, final_evaluation_note, progress_bar

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def torch_threads(monkeypatch):
    """No thread variables set; torch's thread count restored afterwards."""
    before = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    yield
    torch.set_num_threads(before)


def test_threads_default_to_one_and_an_explicit_count_wins(torch_threads):
    torch.set_num_threads(2)  # torch's own default on a 2-core machine: thrashes when it is busy
    assert set_threads("atari100k.threads", 0, CPU) == 1 and torch.get_num_threads() == 1
    assert set_threads("atari100k.threads", 3, CPU) == 3 and torch.get_num_threads() == 3


def test_a_gpu_run_keeps_torchs_default_unless_told(torch_threads):
    torch.set_num_threads(2)
    assert set_threads("atari100k.threads", 0, CUDA) == 2  # the device object only; no GPU needed
    assert set_threads("atari100k.threads", 1, CUDA) == 1


def test_omp_num_threads_is_left_to_torch(torch_threads, monkeypatch):
    """OMP_NUM_THREADS (the user's, or a sweep's per trial) is what torch read at import."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert set_threads("dmc.threads", 0, CPU) == 2 and torch.get_num_threads() == 2
    assert set_threads("dmc.threads", 1, CPU) == 1  # a binding of the run itself still wins


@pytest.mark.parametrize("value", [-1, True, 1.5, "2"])
def test_a_bad_thread_count_names_the_parameter(value):
    with pytest.raises(ConfigError, match=r"^dmc.threads = .* must be an integer >= 0"):
        set_threads("dmc.threads", value, CPU)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty, progress, shown", [
    (True, "auto", True), (False, "auto", False), (False, True, True), (True, False, False)])
def test_the_bar_shows_on_a_terminal_or_when_forced(monkeypatch, tty, progress, shown):
    """'auto' (the default, and the smoke configs') keeps logs and captured output free of the
    bar's carriage-return updates; True forces it into a log (``tail -f``)."""
    stream = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar(check_progress("atari100k.progress", progress), 200, 0, "step", "atari100k:pong:mlr")
    for _ in range(200):
        bar.update(1)
    final_evaluation_note(bar, 100, 27_000)
    bar.close()
    out = stream.getvalue()
    assert ("200/200" in out) is shown
    if shown:  # the ETA, and what a bar standing at 100% is waiting for
        assert "<00:00" in out and "evaluating: 100 episodes (≤ 27,000 steps each)" in out
    else:
        assert out == ""


@pytest.mark.parametrize("value", ["yes", None, 1])
def test_a_bad_progress_value_names_the_choices(value):
    with pytest.raises(ConfigError, match=r"atari100k.progress = .*: use True \(always\), False \(never\) or 'auto'"):
        check_progress("atari100k.progress", value)


def test_a_terminal_that_reports_no_size_still_gets_the_bar(monkeypatch):
    """A pseudo-terminal nobody sized (script(1), some IDEs) reports 0 columns and rows; tqdm's
    dynamic size then drew nothing at all."""
    import tqdm.std

    monkeypatch.setattr(tqdm.std, "_screen_shape_wrapper", lambda: (lambda fp: (0, -1)))
    stream = _Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar("auto", 50, 0, "step", "smoke")
    bar.update(50)
    bar.close()
    assert "50/50" in stream.getvalue()
