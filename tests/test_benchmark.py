"""pipeline.benchmark (scripts/benchmark.py's library) measures what the trainers run, against the machine's own
limit measured in the same run: mode "default" is the config's train flags, every method's own step runs, FLOPs
are what FlopCounterMode counts, peak memory is the kernel's VmHWM, pass/fail compares fractions of the limit,
and the JSON, the Markdown and the scaling figure are written (tiny sizes, a few seconds)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common.distributed import resolve_precision
from pipeline.benchmark import (
    MODES,
    SETUPS,
    Flags,
    best_limits,
    count_flops,
    flags,
    flags_name,
    judge_rows,
    measure_limits,
    peak_bytes,
    plot_scaling,
    results_markdown,
    run_benchmarks,
    time_steps,
    train_row,
    verdict,
    write_json,
)

CPU = torch.device("cpu")
SMALLEST = {"vae": 16, "glow": 8, "pggan": 8, "predictor": 32}  # the smallest resolution each model takes
LIMITS = {"gflops": {"fp32": 50.0, "bf16": 100.0}, "copy_gb_per_s": 10.0}


def _vmhwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("method", ["vae", "glow", "pggan", "predictor"])
def test_default_mode_is_the_config_and_the_methods_own_step_runs(method):
    setup = SETUPS[method]("synthetic", CPU, resolution=SMALLEST[method], batch=4)
    train = setup.train_cfg
    f = flags("default", train, CPU)
    assert f == (resolve_precision(train.precision, CPU)[0], train.channels_last, train.compile)
    step, calls = setup.make_step(f), []
    seconds, first = time_steps(lambda: calls.append(step()), steps=2, warmup=2, device=CPU)
    assert len(calls) == 1 + 1 + 2  # the timed first step, the rest of the warm-up, then the timed steps
    assert 0 < seconds < 60 and 0 < first < 60
    assert calls[-1] is not None  # the package's train_step returns its losses (Glow: a StepResult)


def test_time_steps_reports_the_median_and_the_first_step_apart():
    durations = iter([0.08, 0.0, 0.01, 0.05, 0.01])  # first (e.g. a compile), one more warm-up, three timed

    def step():
        time.sleep(next(durations))

    seconds, first = time_steps(step, steps=3, warmup=2, device=CPU)
    assert 0.08 <= first < 0.15
    assert 0.01 <= seconds < 0.02  # the median of 0.01, 0.05, 0.01, not their mean (0.023)


def test_default_flags_name_what_training_runs():
    assert flags_name(Flags("bf16", True, False)) == "channels_last+bf16"
    assert flags_name(Flags("fp32", False, True)) == "compile+fp32"
    assert MODES["channels_last+bf16"] == Flags("bf16", True, False)


def test_limits_are_positive_numbers_per_precision_and_a_bandwidth():
    limits = measure_limits(CPU, n=128, repeats=2, copy_mib=4)
    assert {"fp32", "bf16"} <= set(limits["gflops"])
    for value in (*limits["gflops"].values(), limits["copy_gb_per_s"]):
        assert isinstance(value, float) and value > 0
    assert limits["matmul_n"] == {"fp32": 128, "bf16": 128} and limits["threads"] == torch.get_num_threads()
    # at a real size the limit is the faster of the matmul and the convolution (oneDNN's can outrun the GEMM)
    limits = measure_limits(CPU, n=1024, repeats=1, copy_mib=4)
    for precision, rate in limits["gflops"].items():
        assert limits["conv_gflops"][precision] > 0
        assert rate == max(limits["matmul_gflops"][precision], limits["conv_gflops"][precision])


def test_flop_count_of_a_linear_step_is_the_matmul_arithmetic():
    layer = torch.nn.Linear(64, 32)
    forward = 2 * 8 * 64 * 32
    x = torch.randn(8, 64)
    assert count_flops(lambda: layer(x)) == forward
    assert count_flops(lambda: layer(x).sum().backward()) == 2 * forward  # backward: the weight's gradient only
    x.requires_grad_(True)
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * forward  # + the input's gradient


def test_flop_count_includes_onednn_fused_convolutions():
    """Glow's bf16 conv + ReLU runs as mkldnn._convolution_pointwise: counted as the convolution it is, not 0."""
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        pytest.skip("this torch build has no oneDNN fused convolution")
    x, w, b = torch.randn(2, 8, 6, 6), torch.randn(16, 8, 3, 3), torch.randn(16)
    plain = count_flops(lambda: torch.nn.functional.conv2d(x, w, b, padding=1))
    assert plain == 2 * (2 * 6 * 6) * 16 * (8 * 9)
    fused = lambda: torch.ops.mkldnn._convolution_pointwise(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")  # noqa: E731
    assert count_flops(fused) == plain


def test_a_training_row_reports_flops_and_its_fraction_of_the_limit():
    setup = SETUPS["vae"]("synthetic", CPU, resolution=16, batch=4)
    expected = count_flops(setup.make_step(MODES["fp32"])) / 4  # one step of the same model, counted apart
    row = train_row(setup, "fp32", steps=1, warmup=1, device=CPU, limits=LIMITS)
    assert row["flops_per_image"] > 0 and row["flops_per_image"] == pytest.approx(expected, rel=1e-6)
    assert row["limit_gflops"] == LIMITS["gflops"]["fp32"]
    assert row["fraction_of_limit"] == pytest.approx(
        row["flops_per_image"] * row["img_per_s"] / (LIMITS["gflops"]["fp32"] * 1e9), rel=1e-3)
    bf16 = train_row(setup, "bf16", steps=1, warmup=1, device=CPU, limits=LIMITS)
    assert bf16["flops_per_image"] == row["flops_per_image"] and bf16["limit_gflops"] == 100.0  # its precision's


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_peak_memory_is_the_kernels_vmhwm_and_never_decreases_between_rows():
    assert abs(peak_bytes(CPU) - _vmhwm_bytes()) <= 8 * 2**20  # the same counter (it may grow in between)
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB resident
    big.add_(1)
    high = peak_bytes(CPU)
    del big
    setup = SETUPS["vae"]("synthetic", CPU, resolution=16, batch=4)
    rows = [train_row(setup, mode, steps=1, warmup=1, device=CPU, limits=LIMITS) for mode in ("fp32", "bf16")]
    assert rows[0]["peak_MB"] * 2**20 >= high - 2**20  # not reset (no clear_refs): the 64 MiB peak still counts
    assert rows[1]["peak_MB"] >= rows[0]["peak_MB"]


def test_pass_fail_compares_fractions_of_the_limit_not_img_per_s():
    assert verdict("vae", "reference", "bf16", 0.31) == (0.30, "pass")
    assert verdict("vae", "reference", "bf16", 0.29) == (0.30, "FAIL")
    assert verdict("vae", "synthetic", "bf16", 0.01) == ("-", "-")  # only the reference size is judged
    assert verdict("vae", "reference", "fp32", 0.01) == ("-", "-")  # the target is a fraction of the bf16 limit
    setup = SETUPS["vae"]("reference", CPU, resolution=32, batch=2)  # the same step, two limits
    slow = train_row(setup, "default", 1, 1, CPU, {"gflops": {"fp32": 1e-6, "bf16": 1e-6}})
    fast = train_row(setup, "default", 1, 1, CPU, {"gflops": {"fp32": 1e9, "bf16": 1e9}})
    if slow["precision"] == "bf16":  # what training runs here is judged, whatever the img/s: the limit decides
        assert slow["passed"] == "pass" and fast["passed"] == "FAIL"
    else:  # an AVX2 machine trains in fp32: the target is a fraction of the bf16 limit, so no verdict
        assert slow["passed"] == fast["passed"] == "-"
    # a mode training does not run carries no verdict, however it compares
    other = train_row(setup, "bf16", 1, 1, CPU, {"gflops": {"fp32": 1e-6, "bf16": 1e-6}})
    assert other["passed"] == "-" and other["fraction_of_limit"] > 1


def test_the_limit_is_the_fastest_measurement_and_rows_are_judged_against_it():
    """The rate moves over minutes: a slow first measurement must not let a row read as more than the limit."""
    slow = {"gflops": {"fp32": 50.0, "bf16": 1.0}, "matmul_gflops": {"fp32": 47.0, "bf16": 1.0},
            "conv_gflops": {"fp32": 50.0, "bf16": 0.0}, "threads": 2}
    fast = {"gflops": {"fp32": 80.0, "bf16": 1.5}, "matmul_gflops": {"fp32": 69.0, "bf16": 1.5},
            "conv_gflops": {"fp32": 80.0, "bf16": 0.0}, "threads": 2}
    best = best_limits([slow, fast])
    assert best["gflops"] == {"fp32": 80.0, "bf16": 1.5} and best["matmul_gflops"]["fp32"] == 69.0
    assert best["measurements"] == [slow["gflops"], fast["gflops"]] and best["threads"] == 2
    rows = [{"method": "vae", "size": "reference", "mode": "default=bf16", "precision": "bf16", "img_per_s": 100.0,
             "flops_per_image": 4e8, "limit_gflops": 1.0, "fraction_of_limit": 40.0, "target": 0.3, "passed": "pass"},
            {"method": "glow", "size": "reference", "mode": "fp32", "precision": "fp32", "img_per_s": 10.0,
             "flops_per_image": 6e9, "limit_gflops": 50.0, "fraction_of_limit": 1.2, "target": "-", "passed": "-"}]
    judge_rows(rows, {"gflops": {"fp32": 80.0, "bf16": 200.0}})
    assert rows[0]["limit_gflops"] == 200.0 and rows[0]["fraction_of_limit"] == 0.2 and rows[0]["passed"] == "FAIL"
    assert rows[1]["fraction_of_limit"] == 0.75 and rows[1]["passed"] == "-"


def test_run_writes_json_merged_with_earlier_runs_and_markdown(tmp_path):
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps({"loader": {"rows": [{"pipeline": "earlier"}]}}))
    args = SimpleNamespace(device="cpu", modes=["bf16"], compile=False, steps=1, warmup=1, matmul_n=128)
    command = "python scripts/benchmark.py --only vae --modes bf16 --steps 1 --warmup 1"
    merged = write_json(path, run_benchmarks(["vae"], args, command))
    on_disk = json.loads(path.read_text())
    assert on_disk == merged and on_disk["loader"]["rows"] == [{"pipeline": "earlier"}]  # kept
    assert {"cpu", "avx512_bf16", "amx", "cores", "torch", "date"} <= set(on_disk["machine"])
    assert on_disk["limits"]["gflops"]["bf16"] > 0 and on_disk["vae"]["limits"] == on_disk["limits"]
    assert len(on_disk["limits"]["measurements"]) == 2  # before and after the rows; the faster of each is the limit
    rows = on_disk["vae"]["rows"]
    assert [(r["size"], r["mode"]) for r in rows] == [("reference", "bf16"), ("synthetic", "bf16")]
    text = results_markdown(on_disk)
    assert command in text and "GFLOP/s" in text and "GB/s" in text
    table = [line for line in text.splitlines() if line.startswith("| vae |")]
    assert len(table) == len(rows) and all(f"{r['fraction_of_limit']:.3f}" in t for r, t in zip(rows, table))
    assert "2026-11-24" in text  # the reference implementations' numbers, labelled with their day


def test_scaling_plot_is_written(tmp_path):
    rows = [{"method": m, "sweep": sweep, "res": res, "batch": batch, "step_ms": 10.0 * res / 32 * batch / 16,
             "img_per_s": 100.0, "peak_MB": 5.0 * batch}
            for m in ("vae", "glow") for sweep, res, batch in
            (("resolution", 32, 16), ("resolution", 64, 16), ("batch", 32, 8), ("batch", 32, 16))]
    path = tmp_path / "scaling.png"
    plot_scaling(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_script_is_arguments_and_library_calls():
    text = (Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py").read_text()
    assert len(text.splitlines()) < 150 and "sys.path" not in text and "from pipeline.benchmark import" in text
