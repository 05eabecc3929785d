"""The GPU readiness check itself (common/gpu_check.py, scripts/gpu_check.py), exercised on the CPU with tiny sizes:
the report's keys, a failing item that does not stop the others, CUDA items skipped with the reason, time limits,
the exit code, and the pieces that only a GPU run reaches (DDP worker with gloo, benchmark and pytest parsing)."""

from __future__ import annotations

import json
import runpy
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from common.checkpoint import CHECKPOINT_FORMAT
from common.gpu_check import (
    ITEMS,
    NO_CUDA,
    REPORT_FORMAT,
    Check,
    CheckFailed,
    CheckSettings,
    Item,
    check_benchmark,
    check_ddp,
    compare_checkpoints,
    exit_code,
    parse_junit,
    run_checks,
)

REPO = Path(__file__).resolve().parents[1]
CUDA_ITEMS = [item.name for item in ITEMS if item.kind == "cuda"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour (CUDA items skipped)")
def test_cpu_run_trains_resumes_edits_and_writes_the_report(tiny_cache, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    only = ("environment", "data", "cuda_tests", "train_vae", "edit_vae", "ddp_nccl", "benchmark")
    settings = CheckSettings(work=tmp_path / "work", device="cpu", quick=True, precision="fp32", cache=tiny_cache,
                             only=only, budget_s=300)
    report = run_checks(settings, report_path=report_path)
    assert json.loads(report_path.read_text()) == json.loads(json.dumps(report, default=str))
    assert report["format"] == REPORT_FORMAT and report["exit_code"] == 0 == exit_code(report)
    assert {"started", "finished", "settings", "environment", "cuda_available", "summary", "seconds"} <= set(report)
    assert report["settings"]["device"] == "cpu" and report["settings"]["quick"] is True
    items = {r["name"]: r for r in report["items"]}
    assert list(items) == list(only)
    for r in report["items"]:
        assert set(r) == {"name", "status", "passed", "seconds", "numbers", "summary", "error", "skip_reason"}
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["device"] == "cpu"
    assert items["data"]["numbers"]["train_images"] > 0

    train = items["train_vae"]
    assert train["status"] == "passed" and train["passed"] is True and train["error"] is None
    numbers = train["numbers"]
    assert numbers["device"] == "cpu" and numbers["precision"] == "fp32" and numbers["images"] == 128
    assert numbers["checkpoint_images_seen"] == 128 and 0 < numbers["stopped_at"] < 128
    assert numbers["resume_exact"] is True and numbers["resume"]["differing"] == 0 and numbers["resume"]["tensors"] > 0
    assert {"loss/total", "loss/recon", "loss/kl"} <= set(numbers["final_losses"])
    assert (tmp_path / "work" / "runs" / "vae" / "full" / "checkpoints" / "last.pt").is_file()
    assert items["edit_vae"]["status"] == "passed"
    assert (tmp_path / "work" / "edits" / "vae" / "Smiling-keep-Mouth_Slightly_Open-mean.gif").is_file()

    for name in ("cuda_tests", "ddp_nccl", "benchmark"):
        assert items[name]["status"] == "skipped" and items[name]["passed"] is None
        assert items[name]["skip_reason"] == NO_CUDA
    assert report["summary"] == {"passed": 4, "failed": 0, "skipped": 3}
    table = capsys.readouterr().out.splitlines()
    assert any(line.startswith("train_vae") and "passed" in line and "resume exact" in line for line in table)
    assert table[-1].startswith("4 passed, 0 failed, 3 skipped")


def fake_items(calls: list[str]) -> list[Item]:
    def ok(name):
        def run(check):
            calls.append(name)
            return {"value": 1, "summary": f"{name} fine"}
        return run

    def boom(check):
        calls.append("boom")
        raise RuntimeError("something broke\nsecond line")

    def half(check):
        calls.append("half")
        raise CheckFailed("the numbers were wrong", {"measured": 2.5})

    return [Item("first", ok("first"), 10, "ok"), Item("boom", boom, 10, "raises"),
            Item("needs_boom", ok("needs_boom"), 10, "uses boom's output", needs=("boom",)),
            Item("half", half, 10, "fails with numbers"), Item("last", ok("last"), 10, "ok")]


def test_a_failing_item_is_recorded_and_the_others_still_run(tmp_path):
    calls: list[str] = []
    report = run_checks(CheckSettings(work=tmp_path / "work", device="cpu"), tmp_path / "r.json",
                        items=fake_items(calls), printer=None)
    assert calls == ["first", "boom", "half", "last"]
    by_name = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())["items"]}
    assert by_name["first"]["status"] == "passed" and by_name["first"]["summary"] == "first fine"
    assert by_name["first"]["numbers"] == {"value": 1}
    assert by_name["boom"]["status"] == "failed" and by_name["boom"]["passed"] is False
    assert by_name["boom"]["error"] == "RuntimeError: something broke"
    assert by_name["needs_boom"]["status"] == "skipped"
    assert by_name["needs_boom"]["skip_reason"] == "needs boom, which failed"
    assert by_name["half"]["error"] == "the numbers were wrong" and by_name["half"]["numbers"] == {"measured": 2.5}
    assert by_name["last"]["status"] == "passed"
    assert report["summary"] == {"passed": 2, "failed": 2, "skipped": 1} and report["exit_code"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without CUDA")
def test_without_cuda_cuda_and_device_items_are_skipped_with_the_reason(tmp_path):
    calls: list[str] = []

    def run(check):
        calls.append("ran")
        return {}

    items = [Item("host", run, 10, "always", "host"), Item("on_device", run, 10, "on the device", "device"),
             Item("cuda_only", run, 10, "CUDA only", "cuda")]
    report = run_checks(CheckSettings(work=tmp_path / "a", device="cuda"), items=items, printer=None)
    assert [r["status"] for r in report["items"]] == ["passed", "skipped", "skipped"]
    assert [r["skip_reason"] for r in report["items"]][1:] == [NO_CUDA, NO_CUDA]
    assert report["exit_code"] == 0 and calls == ["ran"]
    report = run_checks(CheckSettings(work=tmp_path / "b", device="cpu"), items=items, printer=None)
    assert [r["status"] for r in report["items"]] == ["passed", "passed", "skipped"]
    assert set(CUDA_ITEMS) == {"cuda_tests", "ddp_nccl", "benchmark", "train_vae_fp16"}


def test_time_limits_stop_a_hanging_child_and_skip_items_past_the_budget(tmp_path):
    def hang(check):
        check.run("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        return {}

    items = [Item("hang", hang, 1.0, "sleeps past its limit", "host"), Item("after", lambda c: {}, 10, "ok", "host")]
    report = run_checks(CheckSettings(work=tmp_path / "w", device="cpu", budget_s=30), items=items, printer=None)
    hung, after = report["items"]
    assert hung["status"] == "failed" and "sleeper was stopped: it ran past the item's time limit" in hung["error"]
    assert hung["seconds"] < 10 and after["status"] == "passed"
    report = run_checks(CheckSettings(work=tmp_path / "w", device="cpu", budget_s=0.01), items=items, printer=None)
    assert [r["skip_reason"] for r in report["items"]] == ["time budget: 0 s of 0 s left, this item may need 1 s",
                                                            "time budget: 0 s of 0 s left, this item may need 10 s"]
    assert report["exit_code"] == 0


def test_exit_code_is_one_only_for_failures_or_unexplained_skips():
    def report(*results):
        return {"items": [dict(status=s, skip_reason=reason) for s, reason in results]}

    assert exit_code(report(("passed", None), ("skipped", NO_CUDA))) == 0
    assert exit_code(report()) == 0
    assert exit_code(report(("passed", None), ("failed", None))) == 1
    assert exit_code(report(("skipped", None))) == 1  # a skip must say why
    assert exit_code(report(("crashed", None))) == 1


def test_work_folder_that_is_not_ours_is_refused(tmp_path):
    from common.cli import UserError

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="is not a gpu_check work folder"):
        run_checks(CheckSettings(work=tmp_path / "work", device="cpu"), items=[], printer=None)
    assert (tmp_path / "work" / "precious.txt").read_text() == "keep"


def test_compare_checkpoints_counts_differing_tensors(tmp_path):
    a = {"w": torch.ones(3), "b": torch.zeros(2)}
    for name, weights in (("a", a), ("b", {"w": torch.tensor([1.0, 1.5, 1.0]), "b": torch.zeros(2)}), ("c", a)):
        torch.save({"format": CHECKPOINT_FORMAT, "models": {"m": weights}, "ema": None}, tmp_path / f"{name}.pt")
    assert compare_checkpoints(tmp_path / "a.pt", tmp_path / "c.pt") == {"tensors": 2, "differing": 0,
                                                                        "max_abs_diff": 0.0}
    assert compare_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt") == {"tensors": 2, "differing": 1,
                                                                        "max_abs_diff": 0.5}


def test_parse_junit_counts(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
        skipped="1" tests="4"><testcase classname="tests.test_cuda" name="test_a"/><testcase classname="tests.test_cuda"
        name="test_b"><failure message="boom"/></testcase><testcase classname="tests.test_cuda" name="test_c">
        <skipped message="no"/></testcase><testcase classname="tests.test_cuda" name="test_d"/></testsuite></testsuites>
        """))
    assert parse_junit(xml) == {"tests": 4, "passed": 2, "failed": 1, "skipped": 1,
                                "failed_tests": ["tests.test_cuda.test_b"]}


FAKE_BENCHMARK = """
import json, sys
rows = lambda ref, syn: [
    {"size": "reference", "mode": "default=channels_last+bf16", "img_per_s": ref, "step_ms": 1.0, "peak_MB": 5.0,
     "first_step_s": 0.1},
    {"size": "reference", "mode": "fp32", "img_per_s": ref / 2, "step_ms": 2.0, "peak_MB": 5.0, "first_step_s": 0.1},
    {"size": "synthetic", "mode": "default=channels_last+bf16", "img_per_s": syn, "step_ms": 1.0, "peak_MB": 1.0,
     "first_step_s": 0.1}]
out = sys.argv[sys.argv.index("--json") + 1]
json.dump({"vae": {"rows": rows(7190.0, 20000.0)}, "glow": {"rows": rows(50.0, 100.0)}}, open(out, "w"))
"""


def test_benchmark_item_compares_the_reference_rows_with_the_cpu_figures(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv = sys.argv[1:]\n"
                    f"exec(compile({FAKE_BENCHMARK!r}, 'fake', 'exec'))\n")
    fake.chmod(0o755)
    check = Check(CheckSettings(work=tmp_path, device="cuda", python=str(fake)))  # judged as a GPU run
    with pytest.raises(CheckFailed) as info:
        check_benchmark(check, methods=("vae", "glow"))
    assert str(info.value) == "glow: 50.0 img/s on cuda, not faster than the CPU's 93.7"
    numbers = info.value.numbers
    assert numbers["vae"]["speedup_vs_cpu"] == 10.0 and numbers["vae"]["cpu_img_per_s"] == 719.0
    assert numbers["vae"]["reference/fp32"]["img_per_s"] == 3595.0 and numbers["glow"]["speedup_vs_cpu"] == 0.5
    assert numbers["summary"] == "reference size vs CPU: vae x10.0, glow x0.5"
    assert check_benchmark(check, methods=("vae",))["vae"]["speedup_vs_cpu"] == 10.0


def test_ddp_worker_runs_under_torchrun_with_gloo_on_the_cpu(tiny_cache, tmp_path):
    check = Check(CheckSettings(work=tmp_path, device="cpu", precision="fp32", cache=tiny_cache))
    check.item_deadline = check.deadline = check.start + 120
    numbers = check_ddp(check)
    assert numbers["backend"] == "gloo" and numbers["world_size"] == 1 and numbers["all_reduce"] == 1.0
    assert numbers["broadcast_ok"] and numbers["checkpoint_keys_stripped"]
    assert numbers["grad_max_abs"] > 0 and numbers["grad_max_abs_diff"] <= 1e-5 * numbers["grad_max_abs"]
    assert len(numbers["losses"]) == 3 and all(map(torch.isfinite, torch.tensor(numbers["losses"])))


@pytest.mark.parametrize("argv, message", [
    (["--only", "trian_vae"], "error: --only trian_vae: unknown item; did you mean 'train_vae'?"),
    (["--device", "tpu"], "error: --device 'tpu': expected cuda, cuda:N or cpu"),
    (["--budget", "0"], "error: --budget 0: expected a positive number of seconds"),
    (["--out", "report.txt"], "error: --out report.txt: expected a .json file name"),
])
def test_script_reports_bad_options_in_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", *argv])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "scripts" / "gpu_check.py"), run_name="__main__")
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == message
