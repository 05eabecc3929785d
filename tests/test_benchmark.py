"""scripts/benchmark.py measures what the trainers run: mode "default" is the config's train flags, every setup's
step runs, and the scaling figure is written (tiny sizes, a few seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import benchmark  # noqa: E402

from common.distributed import resolve_precision  # noqa: E402


@pytest.mark.parametrize("method", ["vae", "glow", "pggan", "predictor"])
def test_default_mode_is_the_config_and_a_step_runs(method):
    resolution = {"vae": 16, "glow": 8, "pggan": 8, "predictor": 32}[method]  # the smallest each model takes
    setup = benchmark.SETUPS[method]("synthetic", torch.device("cpu"), resolution=resolution, batch=4)
    train = setup.train_cfg
    cpu = torch.device("cpu")
    flags = benchmark._flags("default", train, cpu)
    assert flags == (resolve_precision(train.precision, cpu)[0] == "bf16", train.channels_last, train.compile)
    step, calls = setup.make_step("default"), []
    seconds, peak, first = benchmark.time_steps(lambda: calls.append(step()), steps=2, warmup=2,
                                                device=torch.device("cpu"))
    assert len(calls) == 1 + 1 + 2  # the timed first step, the rest of the warm-up, then the timed steps
    assert 0 < seconds < 60 and 0 < first < 60 and peak >= 0


def test_time_steps_reports_the_median_and_the_first_step_apart():
    import time

    durations = iter([0.08, 0.0, 0.01, 0.05, 0.01])  # first (e.g. a compile), one more warm-up, three timed

    def step():
        time.sleep(next(durations))

    seconds, _, first = benchmark.time_steps(step, steps=3, warmup=2, device=torch.device("cpu"))
    assert 0.08 <= first < 0.15
    assert 0.01 <= seconds < 0.02  # the median of 0.01, 0.05, 0.01, not their mean (0.023)


def test_default_flags_name_what_training_runs():
    assert benchmark._flags_name(benchmark.Flags(True, True, False)) == "channels_last+bf16"
    assert benchmark._flags_name(benchmark.Flags(False, False, True)) == "compile+fp32"


def test_scaling_plot_is_written(tmp_path):
    rows = [{"method": m, "sweep": sweep, "res": res, "batch": batch, "step_ms": 10.0 * res / 32 * batch / 16,
             "img_per_s": 100.0, "peak_MB": 5.0 * batch}
            for m in ("vae", "glow") for sweep, res, batch in
            (("resolution", 32, 16), ("resolution", 64, 16), ("batch", 32, 8), ("batch", 32, 16))]
    path = tmp_path / "scaling.png"
    benchmark._plot_scaling(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
