"""Run a plan of command-line stages, two at a time on a 2-core CPU: what ``make demo`` is built on.

Each ``Stage`` is an ordinary command with a file that exists only once it finished (so a rerun skips it), the
stages it needs, and optionally a run folder to resume. ``run_stages`` starts every stage whose needs are done, in
the plan's order, while fewer than ``jobs`` run:
- Two stages at once each get one thread: small models scale poorly to a second thread (the demo's predictor
  trains 1.6x faster on two threads than on one), so two one-thread stages do more per second than one
  two-thread stage, and one stage's loading overlaps the other's training. A stage that starts alone (nothing
  else running or ready) gets every core.
- With ``jobs > 1`` each stage's output goes to ``<log_dir>/<stage>.log``, and every STATUS_EVERY_S the running
  stages' latest progress (the last state of their progress bars) is printed; with one job, all goes to the
  terminal.
- ``fork=True`` (CPU only) runs each Python stage in a fork of this process after ``preload()`` has imported torch
  and the project once, instead of a fresh interpreter that imports them again (3-5 s a stage); the stage sees
  the same ``sys.argv`` and exit code as the printed command. CUDA cannot be used in a fork once initialised,
  so on a GPU stages are fresh processes.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.cli import UserError

STATUS_EVERY_S = 20.0  # with logs, how often the running stages' progress is printed


@dataclass
class Stage:
    name: str
    command: list[str]
    done_marker: str  # a file that exists only when the stage finished
    resumable_dir: str | None = None  # a run folder: resume it if it exists but is incomplete
    needs: tuple[str, ...] = ()  # stages that must finish first


def shown(command: list[str]) -> str:
    return " ".join(c if c != sys.executable else "python" for c in command)


def preload() -> None:
    """Import what the stages import (torch, torchvision, TensorBoard, every package), once, before forking."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    import common.editing  # noqa: F401
    import common.predictor_training  # noqa: F401
    import flow.training  # noqa: F401
    import interface_gan.training  # noqa: F401
    import pipeline.evaluation  # noqa: F401
    import pipeline.registry  # noqa: F401
    import vae.training  # noqa: F401


def _command(stage: Stage, root: Path) -> list[str]:
    command = list(stage.command)
    if stage.resumable_dir and (root / stage.resumable_dir / "checkpoints" / "last.pt").exists():
        command.append("--resume")
    elif stage.resumable_dir and (root / stage.resumable_dir).exists():
        command.append("--overwrite")  # a folder without a checkpoint holds nothing worth keeping
    return command


def _tail(path: Path, lines: int = 15) -> str:
    """The last non-empty lines of a log (progress bars' carriage returns count as line ends)."""
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def progress(path: Path, width: int = 90) -> str:
    """The last thing a stage's log shows: its progress bar's latest state, or its last line (shortened)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    parts = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
    last = parts[-1] if parts else "no output yet"
    return last if len(last) <= width else last[:width - 3] + "..."


class _Popen:
    """A stage as a fresh process."""

    def __init__(self, command: list[str], root: Path, threads: int, log: Path | None):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        out = open(log, "w") if log else None  # noqa: SIM115 (the child keeps its own descriptor)
        self.process = subprocess.Popen(command, cwd=root, env=env, stdout=out,
                                        stderr=subprocess.STDOUT if out else None)
        if out:
            out.close()

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


class _Fork:
    """A Python stage (``python script.py ARGS``) run in a fork of this process, as its own ``__main__``."""

    def __init__(self, command: list[str], root: Path, threads: int, log: Path | None):
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid, self.code = os.fork(), None
        if self.pid == 0:  # the child: never returns
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                if log:
                    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    os.close(fd)
                    # the parent's sys.stdout may not write to fd 1 (a wrapper, a capture): write to the log
                    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
                import torch

                torch.set_num_threads(threads)
                os.chdir(root)
                sys.argv = command[1:]
                runpy.run_path(command[1], run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, int | None):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 (a bug in the stage: its traceback goes to its log)
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def stop(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            os.waitpid(self.pid, 0)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def run_stages(plan: list[Stage], root: Path, jobs: int, log_dir: Path, fork: bool = False,
               on_done: Callable[[Stage, float], None] = lambda stage, seconds: None) -> None:
    """Run ``plan`` (skipping finished stages), at most ``jobs`` at a time; UserError naming the first that fails
    (the others are stopped: a training saves its checkpoint on SIGTERM and resumes on the next run)."""
    names = {stage.name for stage in plan}
    pending = []
    for stage in plan:
        if (root / stage.done_marker).exists():
            print(f"[demo] {stage.name}: already done ({stage.done_marker})", flush=True)
        else:
            pending.append(stage)
    done = names - {s.name for s in pending}
    running: dict[str, tuple[Stage, _Popen | _Fork, float, Path | None]] = {}
    cores = os.cpu_count() or 1
    log_dir.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _terminate)  # so that `finally` stops the stages
    shown_at = time.perf_counter()
    try:
        while pending or running:
            ready = [s for s in pending if all(n in done or n not in names for n in s.needs)]
            while ready and len(running) < jobs:
                stage = ready.pop(0)
                pending.remove(stage)
                threads = cores if jobs == 1 or not (running or ready) else max(1, cores // jobs)
                command = _command(stage, root)
                log = None if jobs == 1 else log_dir / f"{stage.name}.log"
                where = f" (log: {log.relative_to(root) if log.is_relative_to(root) else log})" if log else ""
                print(f"[demo] {stage.name}: {shown(command)}  [{threads} thread{'s' * (threads > 1)}]{where}",
                      flush=True)
                kind = _Fork if fork and command[0] == sys.executable else _Popen
                running[stage.name] = (stage, kind(command, root, threads, log), time.perf_counter(), log)
            if not running:
                raise UserError(f"demo stages {', '.join(s.name for s in pending)} need stages that are not in the "
                                "plan")
            time.sleep(0.1)
            if jobs > 1 and time.perf_counter() - shown_at > STATUS_EVERY_S:  # their output is in the logs
                shown_at = time.perf_counter()
                for name, (_, _, start, log) in running.items():
                    print(f"[demo]   {name} ({shown_at - start:.0f} s): {progress(log)}", flush=True)
            for name, (stage, process, start, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                seconds = time.perf_counter() - start
                if code != 0:
                    detail = f"\n{_tail(log)}\n(whole log: {log})" if log else ""
                    raise UserError(f"demo stage '{name}' failed (exit code {code}): {shown(stage.command)}{detail}")
                done.add(name)
                print(f"[demo] {name}: done in {seconds:.0f} s", flush=True)
                on_done(stage, seconds)
    finally:
        for _, process, _, _ in running.values():
            process.stop()
        signal.signal(signal.SIGTERM, previous)
