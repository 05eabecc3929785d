"""pipeline.stages: the demo's runner starts a stage only when its needs are done, runs two at once with one
thread each, skips finished stages, and names the failing stage with the end of its log."""

from __future__ import annotations

import sys

import pytest

from common.cli import UserError
from pipeline.stages import Stage, run_stages


def _stage(tmp_path, name, needs=(), code=0, sleep=0.0):
    # each stage appends "<name> start/end <threads>" to a shared file and writes its marker
    script = (f"import os, time, pathlib; p = pathlib.Path({str(tmp_path / 'events')!r}); "
              f"t = os.environ['OMP_NUM_THREADS']; open(p, 'a').write('{name} start ' + t + '\\n'); "
              f"time.sleep({sleep}); print('output', 'of', '{name}'); "
              f"open(p, 'a').write('{name} end\\n'); "
              f"pathlib.Path({str(tmp_path / name)!r}).write_text('x') if {code} == 0 else None; "
              f"raise SystemExit({code})")
    return Stage(name, [sys.executable, "-c", script], name, needs=needs)


def _events(tmp_path):
    return (tmp_path / "events").read_text().split("\n")[:-1]


def test_needs_are_respected_two_run_at_once_with_one_thread_each(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    plan = [_stage(tmp_path, "data"), _stage(tmp_path, "a", ("data",), sleep=0.5),
            _stage(tmp_path, "b", ("data",), sleep=0.5), _stage(tmp_path, "c", ("a", "b"))]
    finished = []
    run_stages(plan, tmp_path, 2, tmp_path / "logs", on_done=lambda stage, s: finished.append(stage.name))
    events = _events(tmp_path)
    assert events[:2] == ["data start 2", "data end"]  # alone: every core
    assert set(events[2:4]) == {"a start 1", "b start 1"}  # together: one thread each
    assert events[-2:] == ["c start 2", "c end"]  # after both of its needs, alone again
    assert finished[0] == "data" and finished[-1] == "c" and sorted(finished) == ["a", "b", "c", "data"]
    assert (tmp_path / "logs" / "a.log").read_text().strip() == "output of a"


def test_finished_stages_are_skipped(tmp_path):
    (tmp_path / "data").write_text("x")
    run_stages([_stage(tmp_path, "data"), _stage(tmp_path, "a", ("data",))], tmp_path, 2, tmp_path / "logs")
    assert _events(tmp_path) == ["a start 2", "a end"]


def test_a_failing_stage_is_named_with_its_log_and_stops_the_plan(tmp_path):
    plan = [_stage(tmp_path, "bad", code=3), _stage(tmp_path, "later", ("bad",))]
    with pytest.raises(UserError, match=r"(?s)demo stage 'bad' failed \(exit code 3\).*output of bad"):
        run_stages(plan, tmp_path, 2, tmp_path / "logs")
    assert not (tmp_path / "later").exists() and "later start" not in (tmp_path / "events").read_text()


def test_forked_stages_see_their_own_argv_threads_and_exit_code(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("import os, sys, pathlib, torch\n"
                      "out = pathlib.Path(sys.argv[1])\n"
                      "out.write_text(' '.join(sys.argv[1:]) + f' {torch.get_num_threads()} {__name__}')\n"
                      "print('printed by', out.name)\n"
                      "raise SystemExit(int(sys.argv[2]))\n")
    good = [Stage(n, [sys.executable, str(script), str(tmp_path / n), "0"], n) for n in ("a", "b")]
    run_stages(good, tmp_path, 2, tmp_path / "logs", fork=True)
    for name in ("a", "b"):
        assert (tmp_path / name).read_text() == f"{tmp_path / name} 0 1 __main__"  # two at once: one thread
        assert (tmp_path / "logs" / f"{name}.log").read_text().strip() == f"printed by {name}"
    bad = Stage("bad", [sys.executable, str(script), str(tmp_path / "bad"), "3"], "never")
    with pytest.raises(UserError, match=r"(?s)'bad' failed \(exit code 3\).*printed by bad"):
        run_stages([bad], tmp_path, 2, tmp_path / "logs", fork=True)


def test_progress_shows_the_latest_state_of_a_progress_bar(tmp_path):
    from pipeline.stages import progress

    log = tmp_path / "x.log"
    log.write_text("loading\ntrain:  10%|#  | 1/10\rtrain:  50%|#####  | 5/10\r")
    assert progress(log) == "train:  50%|#####  | 5/10"
    log.write_text("a" * 200 + "\n")
    assert progress(log, width=20) == "a" * 17 + "..."
    assert progress(tmp_path / "missing.log") == ""
