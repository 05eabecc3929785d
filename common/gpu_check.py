"""The GPU readiness check behind ``make gpu-check`` and ``scripts/gpu_check.py`` (what it checks: docs/gpu.md).

Each check item is a function ``item(check) -> numbers`` (a dict); it fails by raising (``CheckFailed`` carries
the numbers measured so far) and skips by raising ``ItemSkipped`` with a reason. ``run_checks`` runs the items in
order inside one time budget (8 minutes by default), each under its own limit, records each as
``{"name", "status", "passed", "seconds", "numbers", "summary", "error"}``, rewrites the JSON report atomically
after every item (a check killed half-way still leaves what it found) and prints a short table. One failing item
never stops the others; an item that needs another one's output is skipped, with the reason, when that one did
not pass.

Training, edits, the benchmark, the CUDA tests and the DDP run are child processes of the project's own scripts
(``scripts/train_*.py`` and so on), so what is checked is what users run, a crash or a hang in one item cannot
take the others down, and a time limit can kill it. Training runs under ``torch.use_deterministic_algorithms``
(warn-only) so that "stop, resume" can be compared bit for bit with an uninterrupted run.

``CheckSettings(device="cpu", quick=True)`` runs the same pipeline with tiny models on the CPU (the CPU tests
of this module, and a smoke run where no GPU is at hand); items that need CUDA are then skipped with the reason.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.checkpoint import atomic_write_text, load_checkpoint_file

__all__ = [
    "REPORT_FORMAT", "CheckSettings", "Check", "Item", "ITEMS", "CheckFailed", "ItemSkipped", "run_checks",
    "exit_code", "format_table", "item_names", "ddp_worker",
]

REPO = Path(__file__).resolve().parents[1]
REPORT_FORMAT = "expression-synth/gpu-check/v1"
WORK_MARKER = ".gpu_check_work"  # a work folder holds this file; only such a folder is ever deleted
NO_CUDA = "no CUDA (torch.cuda.is_available() is False here)"
RESOLUTION = 32
# Training images/second of one full step at the reference sizes on the CPU, "ours default" (bf16 autocast and
# channels_last), 2-core bf16-capable CPU: README.md, "Measured" (scripts/benchmark.py). No predictor figure.
CPU_FIGURES = {"vae": 719.0, "glow": 93.7, "pggan": 5.18}
CPU_FIGURES_SOURCE = "README.md 'Measured': reference sizes, ours default, 2-core bf16-capable CPU"
# torch prints this (once per op) when warn_only deterministic mode meets an op without a deterministic kernel
_NONDETERMINISTIC = re.compile(r"(\w+) does not have a deterministic implementation")
# Runs a script under deterministic algorithms: "python -c PRELUDE script.py args..."
_DETERMINISTIC_PRELUDE = (
    "import runpy, sys, torch\n"
    "torch.use_deterministic_algorithms(True, warn_only=True)\n"
    "torch.backends.cudnn.benchmark = False\n"
    "torch.backends.cudnn.deterministic = True\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


class CheckFailed(Exception):
    """An item's check did not hold; ``numbers`` are what it measured before it gave up."""

    def __init__(self, message: str, numbers: dict | None = None):
        super().__init__(message)
        self.numbers = numbers or {}


class ItemSkipped(Exception):
    """The item cannot run here; the message is the reason recorded in the report."""


@dataclass
class CheckSettings:
    work: Path  # scratch folder (data, runs, logs); deleted and rebuilt at the start when it is ours
    device: str = "cuda"
    quick: bool = False  # tiny models, data and runs: the whole pipeline in a few minutes on a CPU
    precision: str = ""  # "" = bf16 on CUDA, auto elsewhere (auto: bf16 only where the CPU computes it natively)
    budget_s: float = 480.0
    python: str = sys.executable  # the interpreter of every child process
    cache: Path | None = None  # a prepared 32x32 cache to train on instead of making the synthetic set
    only: tuple[str, ...] = ()  # item names to run (empty: all)


@dataclass(frozen=True)
class Item:
    name: str
    func: Callable[[Check], dict]
    limit_s: float  # at most this long (within what is left of the budget)
    what: str  # one line: what it checks
    kind: str = "device"  # host: always runs; device: runs on the chosen device; cuda: needs CUDA
    needs: tuple[str, ...] = ()  # items whose output it uses


@dataclass
class Proc:
    name: str
    returncode: int
    output: str
    seconds: float
    log: Path


class Check:
    """What the items share: settings, the resolved device, outputs of earlier items, the clock."""

    def __init__(self, settings: CheckSettings):
        import torch

        self.settings = settings
        self.work = Path(settings.work)
        self.logs = self.work / "logs"
        self.cuda = bool(torch.cuda.is_available())
        self.device = str(settings.device).strip().lower()
        self.on_cuda = self.device.startswith("cuda")
        self.device_ready = self.cuda or not self.on_cuda
        self.precision = settings.precision or ("bf16" if self.on_cuda else "auto")
        self.quick = bool(settings.quick)
        self.start = time.monotonic()
        self.deadline = self.start + float(settings.budget_s)
        self.item_deadline = self.deadline
        self.item_cut_by_budget = False  # the running item's limit is what is left of the budget, not its own
        self.cache: Path | None = Path(settings.cache) if settings.cache else None
        self.runs: dict[str, Path] = {}  # method -> finished (uninterrupted) run folder
        self.status: dict[str, str] = {}  # item name -> passed / failed / skipped

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def env(self) -> dict[str, str]:
        """Children import the repository's packages (installed or not) and use deterministic cuBLAS."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS (CUDA >= 10.2)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, name: str, command: Sequence[str]) -> Proc:
        return self.run_parallel([(name, command)])[0]

    def run_parallel(self, commands: Sequence[tuple[str, Sequence[str]]]) -> list[Proc]:
        """Start the commands together (cwd: the repository), wait until the item's deadline; logs in work/logs."""
        self.logs.mkdir(parents=True, exist_ok=True)
        started, results, timed_out = [], [], []
        try:
            for name, command in commands:
                log = self.logs / f"{name}.log"
                handle = open(log, "w", encoding="utf-8")  # closed below, once the child has ended
                started.append((name, subprocess.Popen(
                    [str(c) for c in command], cwd=REPO, env=self.env(), stdout=handle, stderr=subprocess.STDOUT,
                    start_new_session=True), handle, log, time.monotonic()))
            for name, proc, handle, log, t0 in started:
                try:
                    proc.wait(timeout=max(0.1, self.item_deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out.append(name)
                    _kill_group(proc)
                handle.close()
                output = log.read_text(encoding="utf-8", errors="replace")
                results.append(Proc(name, proc.returncode, output, round(time.monotonic() - t0, 2), log))
        finally:  # Ctrl-C or an error here: no child outlives the check (they run in their own sessions)
            for _, proc, handle, _, _ in started:
                if proc.poll() is None:
                    _kill_group(proc)
                handle.close()
        if timed_out:
            why = "the check's time budget ran out" if self.item_cut_by_budget else "it ran past the item's time limit"
            raise CheckFailed(f"{', '.join(timed_out)} was stopped: {why} (log: {self.logs / (timed_out[0] + '.log')})")
        return results


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it started (torchrun's workers)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _require_ok(*procs: Proc) -> None:
    for proc in procs:
        if proc.returncode != 0:
            raise CheckFailed(f"{proc.name} exited with {proc.returncode}: {_last_error(proc.output)} (log: {proc.log})")


def _last_error(output: str) -> str:
    """The line that says what went wrong: the last 'error: ...' line, else the last line of a traceback."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# ---------------------------------------------------------------------------------------------------------------
# Set-up: the machine, the data.


def check_environment(check: Check) -> dict:
    """Versions and the device; every package the project needs must import."""
    import importlib

    import torch

    numbers: dict[str, Any] = {
        "python": platform.python_version(), "executable": check.settings.python, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": check.cuda, "device": check.device, "precision": check.precision, "quick": check.quick,
        "git_commit": _git_commit(),
    }
    missing = []
    for module in ("numpy", "sklearn", "PIL", "yaml", "tqdm", "tensorboard", "matplotlib", "pytest", "torchvision"):
        try:
            numbers[f"version/{module}"] = str(getattr(importlib.import_module(module), "__version__", "?"))
        except ImportError:
            missing.append(module)
    if check.cuda:
        index = (torch.device(check.device).index or 0) if check.on_cuda else 0
        props = torch.cuda.get_device_properties(index)
        numbers.update({
            "gpu_name": props.name, "gpu_count": torch.cuda.device_count(),
            "gpu_capability": f"{props.major}.{props.minor}", "gpu_memory_GiB": round(props.total_memory / 2**30, 1),
            "gpu_bf16_native": props.major >= 8,  # Ampere and newer; older GPUs only emulate bf16
            "cudnn": torch.backends.cudnn.version(), "nccl": _nccl_version(),
        })
        a = torch.randn(256, 256, device=torch.device("cuda", index), dtype=torch.bfloat16)
        numbers["gpu_matmul_finite"] = bool(torch.isfinite(a @ a).all())  # the device really computes
    if missing:
        raise CheckFailed(f"missing packages: {', '.join(missing)} (pip install -r requirements.txt)", numbers)
    where = numbers.get("gpu_name") or ("CPU" if not check.on_cuda else NO_CUDA)
    numbers["summary"] = f"{where}; torch {torch.__version__} (CUDA {torch.version.cuda})"
    return numbers


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=5)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nccl_version() -> str | None:
    import torch

    try:
        version = torch.cuda.nccl.version()
        return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception:  # a build without NCCL
        return None


def make_data(check: Check) -> dict:
    """The synthetic CelebA-format set and its prepared 32x32 cache (or the cache given in the settings)."""
    from common.cache import CelebACache, prepare_cache
    from common.synthetic import write_synthetic_celeba

    if check.cache is None:
        num = 160 if check.quick else 2000
        workers = max(1, min(8, (os.cpu_count() or 2)))
        t0 = time.perf_counter()
        root = write_synthetic_celeba(check.work / "data" / "synthetic", num, 0, workers=workers)
        made = time.perf_counter() - t0
        check.cache = prepare_cache(root, RESOLUTION, out=check.work / "data" / f"cache_{RESOLUTION}",
                                    workers=workers, progress=False, log=None)
        numbers = {"images": num, "make_s": round(made, 2), "prepare_s": round(time.perf_counter() - t0 - made, 2)}
    else:
        numbers = {"given_cache": str(check.cache)}
    splits = {split: len(CelebACache(check.cache, split)) for split in ("train", "valid", "test")}
    numbers.update({f"{split}_images": n for split, n in splits.items()}, cache=str(check.cache))
    if min(splits.values()) < 8:
        raise CheckFailed(f"{check.cache}: too few images per split ({splits}) for the short runs", numbers)
    numbers["summary"] = f"{sum(splits.values())} images at {RESOLUTION}x{RESOLUTION}"
    return numbers


# ---------------------------------------------------------------------------------------------------------------
# Training: each method briefly, then "half, stop, resume" against the uninterrupted run.


@dataclass(frozen=True)
class TrainSpec:
    script: str
    config: str
    total: tuple[int, int]  # images of the short run: (full check, quick)
    sets: tuple[str, ...]  # --set overrides of both sizes
    full_sets: tuple[str, ...]
    quick_sets: tuple[str, ...]
    stop_flag: bool = False  # stop half-way with --stop-after-images (PGGAN's schedule depends on the total)


TRAIN = {
    "predictor": TrainSpec(
        "scripts/train_predictor.py", "configs/predictor/synthetic.yaml", (4096, 64),
        ("optim.schedule=constant", "log.image_every_images=0", "train.checkpoint_every_images=0"),
        ("optim.warmup_images=512", "eval.val_every_images=0", "eval.val_images=256", "log.every_images=512"),
        ("model.width=8", "model.blocks=[1,1,1,1]", "train.batch_size=16", "optim.warmup_images=16",
         "eval.val_every_images=0", "eval.val_images=16", "log.every_images=16")),
    "vae": TrainSpec(
        "scripts/train_vae.py", "configs/vae/synthetic.yaml", (4096, 128),
        ("log.image_every_images=0", "train.checkpoint_every_images=0", "eval.val_every_images=0"),
        ("vae.kl_warmup_images=1024", "log.every_images=512"),
        ("model.widths=[8,16]", "model.latent_dim=8", "train.batch_size=32", "vae.kl_warmup_images=64",
         "log.every_images=32")),
    "glow": TrainSpec(
        "scripts/train_glow.py", "configs/flow/synthetic.yaml", (2048, 64),
        ("log.image_every_images=0", "train.checkpoint_every_images=0", "eval.test_every_images=0"),
        ("glow.warmup_images=512", "glow.init_images=256", "eval.test_images=256", "eval.grid_images=8",
         "log.every_images=256"),
        ("model.levels=2", "model.steps=1", "model.hidden_channels=8", "train.batch_size=16",
         "glow.warmup_images=16", "glow.init_images=16", "eval.test_images=16", "eval.grid_images=4",
         "log.every_images=16")),
    "pggan": TrainSpec(
        "scripts/train_pggan.py", "configs/interface_gan/synthetic.yaml", (4096, 112),
        ("log.image_every_images=0", "train.checkpoint_every_images=0"),
        ("pggan.grid_images=16", "log.every_images=512", "edit.inversion_steps=100", "edit.inversion_starts=4",
         "edit.ganspace_samples=256"),
        ("pggan.phase_weights=[1,1,1,1,1,1,1]", "model.latent_dim=16", "model.fmap_base=64", "model.fmap_max=16",
         "model.fmap_min=8", "pggan.batch_sizes=[8,8,8,8]", "pggan.grid_images=4", "log.every_images=16",
         "edit.inversion_steps=20", "edit.inversion_starts=2", "edit.ganspace_samples=64"),
        stop_flag=True),
}


def _train_command(check: Check, method: str, out: Path, total: int, precision: str, extra: Sequence[str] = (),
                   deterministic: bool = True, stop_after: int = 0) -> list[str]:
    spec = TRAIN[method]
    sets = [*spec.sets, *(spec.quick_sets if check.quick else spec.full_sets), f"train.total_images={total}",
            f"train.device={check.device}", f"train.precision={precision}", f"data.cache={check.cache}",
            "log.tensorboard=false", *extra]
    args = [spec.script, "--config", spec.config, "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    if stop_after:
        args += ["--stop-after-images", str(stop_after)]
    head = [check.settings.python, "-c", _DETERMINISTIC_PRELUDE] if deterministic else [check.settings.python]
    return head + args


def _run_line(output: str) -> dict:
    """Device and precision from RunContext's 'run folder: ... (method m, device d, precision p, ...)' line."""
    match = re.search(r"device (\S+), precision (\w+)", output)
    return {"device": match.group(1), "precision": match.group(2)} if match else {}


def _losses(run: Path) -> dict[str, list[float]]:
    """Every logged loss (loss/*, train/bpd) of a run's stats.jsonl, in order."""
    series: dict[str, list[float]] = {}
    path = run / "stats.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        for key, value in json.loads(line).items():
            if (key.startswith("loss/") or key == "train/bpd") and isinstance(value, (int, float)):
                series.setdefault(key, []).append(float(value))
    return series


def _last_perf(run: Path) -> float | None:
    path = run / "stats.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    values = [r["perf/img_per_s"] for r in rows if isinstance(r.get("perf/img_per_s"), (int, float))]
    return round(values[-1], 1) if values else None


def _weights(ckpt: dict) -> dict[str, Any]:
    """Every tensor under the checkpoint's "models" and "ema", by dotted name."""
    import torch

    out: dict[str, Any] = {}

    def collect(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for key, inner in value.items():
                collect(f"{prefix}.{key}", inner)

    for key in ("models", "ema"):
        collect(key, ckpt.get(key))
    return out


def compare_checkpoints(a: Path, b: Path) -> dict:
    """How far two runs' weights are apart: tensors compared, how many differ, the largest difference."""
    wa, wb = _weights(load_checkpoint_file(a)), _weights(load_checkpoint_file(b))
    if set(wa) != set(wb):
        raise CheckFailed(f"{a} and {b} hold different tensors: {sorted(set(wa) ^ set(wb))[:5]}")
    differing = [k for k in wa if not (wa[k].shape == wb[k].shape and bool((wa[k] == wb[k]).all()))]
    max_abs = max((float((wa[k].double() - wb[k].double()).abs().max()) for k in differing
                   if wa[k].is_floating_point() and wa[k].shape == wb[k].shape), default=0.0)
    return {"tensors": len(wa), "differing": len(differing), "max_abs_diff": max_abs}


def train_and_resume(check: Check, method: str, precision: str | None = None, tag: str = "") -> dict:
    """Train ``method`` uninterrupted (A) and, in parallel, half-way (B); resume B to the end; compare with A.

    Passes when both runs' logged losses are finite, the checkpoint loads with weights_only=True and has every
    image, the run reports the device and precision asked for, and the resumed weights equal A's bit for bit. When
    they do not, A is trained once more: a repeat equal to A means the resume lost something (a failure); a repeat
    that differs too means training on this device is not repeatable, and the resume passes when it is within 10x
    of the repeat's difference from A.
    """
    precision = precision or check.precision
    full, quick_total = TRAIN[method].total
    total = quick_total if check.quick else full
    half = total // 2
    name = f"{method}{tag}"
    root = check.work / "runs" / name
    spec = TRAIN[method]
    a_cmd = _train_command(check, method, root / "full", total, precision)
    if spec.stop_flag:
        b_cmd = _train_command(check, method, root / "split", total, precision, stop_after=half)
    else:
        b_cmd = _train_command(check, method, root / "split", half, precision)
    a, b = check.run_parallel([(f"{name}_full", a_cmd), (f"{name}_half", b_cmd)])
    _require_ok(a, b)
    stopped_at = int(load_checkpoint_file(root / "split" / "checkpoints" / "last.pt")["images_seen"])
    resume = check.run(f"{name}_resume", [*_train_command(check, method, root / "split", total, precision),
                                          "--resume"])
    _require_ok(resume)

    ran = _run_line(a.output)
    losses = _losses(root / "full")
    resumed_losses = _losses(root / "split")
    ckpt = load_checkpoint_file(root / "full" / "checkpoints" / "last.pt")  # weights_only=True, on the CPU
    numbers: dict[str, Any] = {
        "device": ran.get("device"), "precision": ran.get("precision"), "images": total, "stopped_at": stopped_at,
        "seconds_full": a.seconds, "seconds_half": b.seconds, "seconds_resume": resume.seconds,
        "img_per_s_logged": _last_perf(root / "full"),
        "final_losses": {k: round(v[-1], 5) for k, v in losses.items()},
        "checkpoint_MB": round((root / "full" / "checkpoints" / "last.pt").stat().st_size / 2**20, 2),
        "checkpoint_images_seen": int(ckpt["images_seen"]),
    }
    ops = sorted(set(_NONDETERMINISTIC.findall(a.output + b.output + resume.output)))
    if ops:
        numbers["nondeterministic_ops"] = ops
    if precision == "fp16":
        numbers["grad_scale"] = (ckpt.get("scaler") or {}).get("scale")
    problems = []
    if not ran or not ran["device"].startswith(check.device.split(":")[0]):
        problems.append(f"the run reports device {ran.get('device')!r}, not {check.device!r}")
    if precision != "auto" and ran.get("precision") != precision:
        problems.append(f"the run reports precision {ran.get('precision')!r}, not {precision!r}")
    if not losses or not resumed_losses:
        problems.append("no loss was logged (stats.jsonl)")
    bad = [k for series in (losses, resumed_losses) for k, v in series.items() if not all(map(math.isfinite, v))]
    if bad:
        problems.append(f"non-finite {', '.join(sorted(set(bad)))}")
    if numbers["checkpoint_images_seen"] != total:
        problems.append(f"the checkpoint has {numbers['checkpoint_images_seen']} images seen, not {total}")
    if not 0 < stopped_at < total:
        problems.append(f"the half run stopped at {stopped_at} images, not between 0 and {total}")
    if precision == "fp16" and not numbers["grad_scale"]:
        problems.append("fp16 run without GradScaler state in its checkpoint")

    diff = compare_checkpoints(root / "full" / "checkpoints" / "last.pt", root / "split" / "checkpoints" / "last.pt")
    numbers["resume"] = diff
    numbers["resume_exact"] = diff["differing"] == 0
    if diff["differing"]:
        repeat = check.run(f"{name}_repeat", _train_command(check, method, root / "repeat", total, precision))
        _require_ok(repeat)
        noise = compare_checkpoints(root / "full" / "checkpoints" / "last.pt",
                                    root / "repeat" / "checkpoints" / "last.pt")
        numbers["repeat"] = noise
        if noise["differing"] == 0:
            problems.append(f"resumed weights differ from the uninterrupted run ({diff['differing']} of "
                            f"{diff['tensors']} tensors, max |diff| {diff['max_abs_diff']:.3g}) although a repeat "
                            "of that run is bit-identical: the resume loses state")
        elif diff["max_abs_diff"] > 10 * noise["max_abs_diff"]:
            problems.append(f"resumed weights are {diff['max_abs_diff']:.3g} from the uninterrupted run, more than "
                            f"10x a plain repeat's run-to-run difference {noise['max_abs_diff']:.3g}")
    resume_text = "exact" if numbers["resume_exact"] else f"max |diff| {diff['max_abs_diff']:.2g}"
    numbers["summary"] = (f"{ran.get('device')} {ran.get('precision')}, {total} img in {a.seconds:.0f} s, "
                          f"resume {resume_text}")
    if problems:
        raise CheckFailed("; ".join(problems), numbers)
    check.runs[name] = root / "full"
    return numbers


def _train_item(method: str, precision: str | None = None, tag: str = "") -> Callable[[Check], dict]:
    def item(check: Check) -> dict:
        return train_and_resume(check, method, precision, tag)
    item.__name__ = f"train_{method}{tag}"
    return item


def check_compile(check: Check) -> dict:
    """The VAE and the predictor with train.compile=true (where it helps: static shapes, small kernels)."""
    total = 256 if check.quick else 4096
    methods = ("vae", "predictor")
    commands = [(f"{m}_compile", _train_command(check, m, check.work / "runs" / f"{m}_compile", total,
                                                check.precision, extra=["train.compile=true"], deterministic=False))
                for m in methods]
    procs = check.run_parallel(commands)
    _require_ok(*procs)
    numbers: dict[str, Any] = {}
    problems = []
    for method, proc in zip(methods, procs, strict=True):
        run = check.work / "runs" / f"{method}_compile"
        losses = _losses(run)
        finite = bool(losses) and all(math.isfinite(v) for series in losses.values() for v in series)
        ckpt = load_checkpoint_file(run / "checkpoints" / "last.pt")
        numbers[method] = {"seconds": proc.seconds, "img_per_s_logged": _last_perf(run), "losses_finite": finite,
                           "final_losses": {k: round(v[-1], 5) for k, v in losses.items()},
                           "checkpoint_images_seen": int(ckpt["images_seen"]),
                           "uncompiled_img_per_s_logged": _last_perf(check.runs[method]) if method in check.runs
                           else None}
        if not finite:
            problems.append(f"{method}: non-finite or missing losses")
        if any(k.startswith("models.") and "_orig_mod" in k for k in _weights(ckpt)):
            problems.append(f"{method}: checkpoint keys keep torch.compile's _orig_mod prefix")
    numbers["summary"] = ", ".join(f"{m} {numbers[m]['img_per_s_logged']} img/s compiled" for m in methods)
    if problems:
        raise CheckFailed("; ".join(problems), numbers)
    return numbers


# ---------------------------------------------------------------------------------------------------------------
# Edits: one per method, from the short runs, on the device.


def _edit(check: Check, name: str, script: str, run: Path, stem: str, extra: Sequence[str]) -> tuple[dict, Proc]:
    out = check.work / "edits" / name
    proc = check.run(f"edit_{name}", [check.settings.python, script, "--run", str(run), "--attribute", "Smiling",
                                      "--steps", "3", "--range", "-1", "1", "--device", check.device, "--out",
                                      str(out), *extra])
    _require_ok(proc)
    missing = [kind for kind in ("png", "gif", "json") if not (out / f"{stem}.{kind}").is_file()]
    if missing:
        raise CheckFailed(f"edit_{name}: no {', '.join(missing)} written in {out}")
    record = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
    if record.get("strengths") != [-1.0, 0.0, 1.0]:
        raise CheckFailed(f"edit_{name}: strengths {record.get('strengths')} in {out / stem}.json")
    return record, proc


def _train_images(check: Check) -> str:
    return "64" if check.quick else "512"


def check_edit_vae(check: Check) -> dict:
    record, proc = _edit(check, "vae", "scripts/edit_vae.py", check.runs["vae"],
                         "Smiling-keep-Mouth_Slightly_Open-mean",
                         ["--keep", "Mouth_Slightly_Open", "--cache-images", "2", "--max-train-images",
                          _train_images(check)])
    cosine = record["direction"]["cosine_to_unconditioned"]
    return {"seconds": proc.seconds, "cosine_to_unconditioned": cosine, "latent_dim": record["latent_dim"],
            "summary": f"2 faces x 3 strengths in {proc.seconds:.0f} s"}


def check_edit_glow(check: Check) -> dict:
    record, proc = _edit(check, "glow", "scripts/edit_glow.py", check.runs["glow"], "Smiling-mean",
                         ["--cache-images", "2", "--max-train-images", _train_images(check)])
    error = record.get("unedited_reconstruction_max_abs_error")
    numbers = {"seconds": proc.seconds, "unedited_reconstruction_max_abs_error": error,
               "summary": f"unedited column error {error}"}
    if error != 0.0:  # Glow's promise: decode(encode(x)) is x on its grid
        raise CheckFailed(f"Glow's unedited column differs from its input by {error} (0 on the CPU)", numbers)
    return numbers


def check_edit_interface_gan(check: Check) -> dict:
    record, proc = _edit(check, "interface_gan", "scripts/edit_interface_gan.py", check.runs["pggan"],
                         "Smiling-keep-Mouth_Slightly_Open-boundary",
                         ["--keep", "Mouth_Slightly_Open", "--cache-images", "1", "--predictor",
                          str(check.runs["predictor"]), "--samples", "200" if check.quick else "512"])
    predicted = record.get("predicted", {}).get("Smiling", [])
    psnr = record.get("inversion", {}).get("mean_psnr")
    numbers = {"seconds": proc.seconds, "predicted_smiling": predicted, "inversion_psnr": psnr,
               "summary": f"inversion PSNR {psnr} dB"}
    if len(predicted) != 3 or not all(map(math.isfinite, predicted)) or psnr is None or not math.isfinite(psnr):
        raise CheckFailed("edit_interface_gan: missing or non-finite predicted scores or inversion PSNR", numbers)
    return numbers


# ---------------------------------------------------------------------------------------------------------------
# CUDA only: the cuda-marked tests, one NCCL DDP process, the benchmark against the CPU figures.


def parse_junit(path: Path) -> dict:
    """Counts of a pytest --junitxml file: tests, passed, failed (failures + errors), skipped."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}.{c.get('name')}" for s in suites for c in s.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {"tests": counts["tests"], "passed": counts["tests"] - counts["failures"] - counts["errors"]
            - counts["skipped"], "failed": counts["failures"] + counts["errors"], "skipped": counts["skipped"],
            "failed_tests": failed[:10]}


def check_cuda_tests(check: Check) -> dict:
    """``pytest -m cuda``: every CUDA-marked test must run (not skip) and pass."""
    xml = check.work / "cuda_tests.xml"
    proc = check.run("cuda_tests", [check.settings.python, "-m", "pytest", "-q", "-m", "cuda", "-p",
                                    "no:cacheprovider", f"--junitxml={xml}"])
    if not xml.is_file():
        raise CheckFailed(f"pytest exited with {proc.returncode} without a report: {_last_error(proc.output)}")
    numbers = {**parse_junit(xml), "exit_code": proc.returncode, "seconds": proc.seconds}
    numbers["summary"] = f"{numbers['passed']} passed, {numbers['failed']} failed, {numbers['skipped']} skipped"
    if numbers["failed"] or proc.returncode not in (0, 5):
        raise CheckFailed(f"cuda tests failed: {', '.join(numbers['failed_tests']) or _last_error(proc.output)}",
                          numbers)
    if numbers["passed"] == 0:
        raise CheckFailed("no CUDA-marked test ran (all skipped or none collected)", numbers)
    return numbers


DDP_WORKER = "from common.gpu_check import ddp_worker\nddp_worker()\n"


def check_ddp(check: Check) -> dict:
    """One process under torchrun: NCCL all-reduce and broadcast, DDP gradients equal the bare model's, steps."""
    script = check.work / "ddp_worker.py"
    script.write_text(DDP_WORKER, encoding="utf-8")
    result = check.work / "ddp.json"
    # the worker's settings travel in a file: torchrun would take flags after the script for its own abbreviations
    settings = check.work / "ddp_settings.json"
    settings.write_text(json.dumps({"out": str(result), "cache": str(check.cache), "run": str(check.work / "runs" /
                                    "ddp"), "precision": check.precision, "device": check.device}), encoding="utf-8")
    proc = check.run("ddp_nccl", [check.settings.python, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc_per_node=1", str(script), str(settings)])
    _require_ok(proc)
    numbers = json.loads(result.read_text(encoding="utf-8"))
    numbers["seconds"] = proc.seconds
    problems = [text for ok, text in (
        (numbers["backend"] == ("nccl" if check.on_cuda else "gloo"), f"backend {numbers['backend']}"),
        (numbers["all_reduce"] == 1.0, f"all_reduce gave {numbers['all_reduce']}"),
        (numbers["broadcast_ok"], "broadcast_object_list lost the object"),
        (numbers["grad_max_abs_diff"] <= 1e-5 * max(1.0, numbers["grad_max_abs"]),
         f"DDP gradients differ from the bare model's by {numbers['grad_max_abs_diff']:.3g}"),
        (all(map(math.isfinite, numbers["losses"])), "non-finite loss"),
        (numbers["checkpoint_keys_stripped"], "checkpoint keys keep DDP's 'module.' prefix"),
    ) if not ok]
    numbers["summary"] = f"NCCL {numbers.get('nccl')}, {len(numbers['losses'])} DDP steps"
    if problems:
        raise CheckFailed("; ".join(problems), numbers)
    return numbers


def ddp_worker(argv: Sequence[str] | None = None) -> None:
    """The process torchrun starts for ``check_ddp`` (one rank); ``argv[0]``: its settings file (JSON).

    Writes its findings as JSON to the settings' ``out``.

    NCCL on CUDA; gloo with --device cpu, which is how the CPU tests exercise this code.
    """
    import argparse
    import contextlib
    import copy

    import torch
    import torch.distributed as dist
    from torch import nn

    from common.cache import CelebACache
    from common.config import load_config
    from common.distributed import local_rank
    from common.run import RunContext, adam, unwrap
    from vae.config import VAEConfig
    from vae.model import build_model, vae_loss

    settings = json.loads(Path((sys.argv[1:] if argv is None else argv)[0]).read_text(encoding="utf-8"))
    args = argparse.Namespace(**settings)  # out, cache, run, precision, device
    on_cuda = args.device.startswith("cuda")
    device = torch.device("cuda", local_rank()) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if on_cuda else "gloo")  # env:// from torchrun
    total = torch.ones(1, device=device)
    dist.all_reduce(total)  # one rank: the sum is the value
    box = [{"check": "ok"} if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)

    cfg = load_config(VAEConfig, REPO / "configs" / "vae" / "synthetic.yaml", [
        f"data.cache={args.cache}", f"train.device={device}", f"train.precision={args.precision}",
        "log.tensorboard=false", "train.batch_size=32", "model.widths=[16,32,64]"])
    # WORLD_SIZE=1: RunContext sees one process and adds no DDP wrapper itself; it still gives autocast and saving.
    run_args = argparse.Namespace(out=args.run, resume=False, overwrite=True, dry_run=False, config=None)
    ctx = RunContext.create("vae", cfg, run_args)
    torch.manual_seed(0)
    bare = build_model(cfg.model, cfg.data.resolution).to(device)
    model = nn.parallel.DistributedDataParallel(copy.deepcopy(bare), device_ids=[device.index] if on_cuda else None)
    batches = ctx.batches(CelebACache(args.cache, "train"), cfg.train.batch_size)
    x = next(batches)["image"]  # [B, 3, R, R]

    def loss_of(net: nn.Module, autocast: bool = True) -> torch.Tensor:
        torch.manual_seed(1)  # the same reparameterisation noise for both
        with ctx.autocast() if autocast else contextlib.nullcontext():
            out = net(x)
        return vae_loss(x, out.x_mean, out.mu, out.logvar, unwrap(net).log_sigma, 1.0)["total"]

    # The same fp32 step through both, with deterministic kernels: DDP's all-reduced gradients equal the bare ones.
    torch.use_deterministic_algorithms(True, warn_only=True)
    loss_of(bare, autocast=False).backward()
    loss_of(model, autocast=False).backward()
    torch.use_deterministic_algorithms(False)
    pairs = list(zip(bare.parameters(), model.module.parameters(), strict=True))
    grad_diff = max(float((a.grad - b.grad).abs().max()) for a, b in pairs)
    grad_max = max(float(a.grad.abs().max()) for a, _ in pairs)
    model.zero_grad(set_to_none=True)
    opt = adam(model.parameters(), lr=cfg.train.lr)
    losses, start = [], time.perf_counter()
    for _ in range(3):
        x = next(batches)["image"]
        loss = loss_of(model)
        ctx.check_finite(loss)
        ctx.step(loss, opt)
        losses.append(float(loss))
    if on_cuda:
        torch.cuda.synchronize(device)
    step_ms = (time.perf_counter() - start) / 3 * 1e3
    path = ctx.save_checkpoint({"models": {"vae": model}, "optimizers": {"adam": opt}, "images_seen": 96})
    keys = list(torch.load(path, map_location="cpu", weights_only=True)["models"]["vae"])
    ctx.close()
    result = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "nccl": _nccl_version(),
              "all_reduce": float(total), "broadcast_ok": box[0] == {"check": "ok"}, "grad_max_abs_diff": grad_diff,
              "grad_max_abs": grad_max, "losses": losses, "step_ms": round(step_ms, 2),
              "checkpoint_keys_stripped": bool(keys) and not any(k.startswith("module.") for k in keys)}
    dist.destroy_process_group()
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


def check_benchmark(check: Check, methods: Sequence[str] = ("vae", "glow", "pggan", "predictor")) -> dict:
    """scripts/benchmark.py at the reference and synthetic sizes; the reference rows against the CPU figures."""
    path = check.work / "benchmark.json"
    steps, warmup = ("1", "1") if check.quick else ("10", "3")
    proc = check.run("benchmark", [check.settings.python, "scripts/benchmark.py", "--only", *methods, "--device",
                                   check.device, "--modes", "default", "fp32", "--steps", steps, "--warmup", warmup,
                                   "--json", str(path)])
    _require_ok(proc)
    results = json.loads(path.read_text(encoding="utf-8"))
    numbers: dict[str, Any] = {"cpu_figures_source": CPU_FIGURES_SOURCE, "seconds": proc.seconds}
    problems, speedups = [], []
    for method in methods:
        rows = results[method]["rows"]
        bad = [r for r in rows if not (isinstance(r["img_per_s"], (int, float)) and r["img_per_s"] > 0)]
        if bad:
            problems.append(f"{method}: no throughput in {len(bad)} rows")
        entry = {f"{r['size']}/{r['mode']}": {"img_per_s": r["img_per_s"], "step_ms": r["step_ms"],
                                              "peak_MB": r["peak_MB"], "first_step_s": r["first_step_s"]}
                 for r in rows}
        default = next((r for r in rows if r["size"] == "reference" and r["mode"].startswith("default")), None)
        cpu = CPU_FIGURES.get(method)
        if default is not None and cpu:
            entry["cpu_img_per_s"] = cpu
            entry["speedup_vs_cpu"] = round(default["img_per_s"] / cpu, 1)
            speedups.append(f"{method} x{entry['speedup_vs_cpu']}")
            if check.on_cuda and default["img_per_s"] <= cpu:
                problems.append(f"{method}: {default['img_per_s']} img/s on {check.device}, not faster than the "
                                f"CPU's {cpu}")
        numbers[method] = entry
    numbers["summary"] = "reference size vs CPU: " + (", ".join(speedups) or "no CPU figure")
    if problems:
        raise CheckFailed("; ".join(problems), numbers)
    return numbers


# ---------------------------------------------------------------------------------------------------------------
# The items and the runner.

ITEMS: tuple[Item, ...] = (
    Item("environment", check_environment, 60, "versions, the device, the packages the project needs", "host"),
    Item("data", make_data, 90, "the synthetic CelebA-format set and its 32x32 cache", "host"),
    Item("cuda_tests", check_cuda_tests, 150, "pytest -m cuda: every CUDA-marked test runs and passes", "cuda"),
    *(Item(f"train_{m}", _train_item(m), 120, f"train {m} briefly: finite losses, checkpoint, exact resume",
           needs=("data",)) for m in ("predictor", "vae", "glow", "pggan")),
    Item("edit_vae", check_edit_vae, 60, "one VAE edit on the device", needs=("train_vae",)),
    Item("edit_glow", check_edit_glow, 60, "one Glow edit on the device; the unedited column exact",
         needs=("train_glow",)),
    Item("edit_interface_gan", check_edit_interface_gan, 90, "one InterFaceGAN edit with inversion on the device",
         needs=("train_pggan", "train_predictor")),
    Item("ddp_nccl", check_ddp, 90, "torchrun, 1 process: NCCL collectives and a DDP-wrapped VAE", "cuda",
         needs=("data",)),
    Item("benchmark", check_benchmark, 180, "training step time at the reference sizes vs the CPU figures", "cuda"),
    Item("train_vae_fp16", _train_item("vae", "fp16", "_fp16"), 120,
         "the VAE in fp16 with GradScaler: finite losses, scaler state saved, exact resume", "cuda",
         needs=("data",)),
    Item("compile", check_compile, 180, "torch.compile of the VAE and the predictor: finite losses, checkpoint",
         needs=("data",)),
)


def item_names() -> list[str]:
    return [item.name for item in ITEMS]


def _result(name: str, status: str, seconds: float = 0.0, numbers: dict | None = None, error: str | None = None,
            reason: str | None = None) -> dict:
    numbers = dict(numbers or {})
    summary = numbers.pop("summary", None)
    return {"name": name, "status": status, "passed": {"passed": True, "failed": False}.get(status),
            "seconds": round(seconds, 2), "numbers": numbers, "summary": summary, "error": error,
            "skip_reason": reason}


def _run_item(check: Check, item: Item) -> dict:
    if item.kind == "cuda" and not check.cuda:
        return _result(item.name, "skipped", reason=NO_CUDA)
    if item.kind == "cuda" and not check.on_cuda:
        return _result(item.name, "skipped", reason=f"needs CUDA; this check runs on {check.device}")
    if item.kind == "device" and not check.device_ready:
        return _result(item.name, "skipped", reason=NO_CUDA)
    for need in item.needs:
        if check.status.get(need) != "passed":
            return _result(item.name, "skipped", reason=f"needs {need}, which {check.status.get(need, 'did not run')}")
    left = check.remaining()
    if left < item.limit_s / 2:  # too little left to finish it, most likely: leave it out rather than kill it
        return _result(item.name, "skipped", reason=f"time budget: {max(left, 0):.0f} s of "
                       f"{check.settings.budget_s:.0f} s left, this item may need {item.limit_s:.0f} s")
    limit = min(item.limit_s, left)
    check.item_deadline = time.monotonic() + limit
    check.item_cut_by_budget = left < item.limit_s
    start = time.monotonic()
    try:
        numbers = item.func(check)
        status, error, reason = "passed", None, None
    except ItemSkipped as exc:
        numbers, status, error, reason = {}, "skipped", None, str(exc)
    except CheckFailed as exc:
        numbers, status, error, reason = exc.numbers, "failed", str(exc), None
    except Exception as exc:  # any bug or surprise in one item is that item's failure, never the whole check's
        first = (str(exc).strip().splitlines() or [""])[0]
        numbers, status, error, reason = {}, "failed", f"{type(exc).__name__}: {first}"[:400], None
    seconds = time.monotonic() - start
    if status == "passed" and seconds > limit + 5:  # in-process items cannot be stopped; they fail afterwards
        status, error = "failed", f"took {seconds:.0f} s, over its limit of {limit:.0f} s"
    return _result(item.name, status, seconds, numbers, error, reason)


def prepare_work(work: Path) -> None:
    """Start from an empty work folder; refuse to delete a folder that is not one of ours."""
    from common.cli import UserError

    if work.exists():
        if not (work / WORK_MARKER).is_file() and any(work.iterdir()):
            raise UserError(f"{work}: exists and is not a gpu_check work folder (no {WORK_MARKER}); choose another "
                            "--work or remove it")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("scratch folder of scripts/gpu_check.py; deleted by its next run\n")


def run_checks(settings: CheckSettings, report_path: Path | None = None, items: Sequence[Item] | None = None,
               printer: Callable[[str], None] | None = print) -> dict:
    """Run the items (all of ``ITEMS``, or ``settings.only``); the report dict, also written to ``report_path``."""
    items = list(items if items is not None else ITEMS)
    if settings.only:
        items = [item for item in items if item.name in settings.only]
    prepare_work(Path(settings.work))
    check = Check(settings)
    say = printer or (lambda text: None)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"device": check.device, "precision": check.precision, "quick": check.quick,
                     "budget_s": settings.budget_s, "work": str(check.work), "python": settings.python},
        "cuda_available": check.cuda, "items": [], "summary": {},
    }
    if check.on_cuda and not check.cuda:
        say(f"gpu_check: {NO_CUDA}: every item that needs the GPU is skipped (--device cpu runs them on the CPU)")
    for item in items:
        say(f"[{item.name}] {item.what}")
        result = _run_item(check, item)
        check.status[item.name] = result["status"]
        if item.name == "environment":
            report["environment"] = result["numbers"]
        report["items"].append(result)
        _finish(report, check, report_path)
        line = result["summary"] or result["error"] or result["skip_reason"] or ""
        say(f"  {result['status']} in {result['seconds']:.1f} s: {line}")
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _finish(report, check, report_path)
    say(format_table(report))
    return report


def _finish(report: dict, check: Check, report_path: Path | None) -> None:
    statuses = [r["status"] for r in report["items"]]
    report["summary"] = {s: statuses.count(s) for s in ("passed", "failed", "skipped")}
    report["seconds"] = round(time.monotonic() - check.start, 1)
    report["exit_code"] = exit_code(report)
    if report_path is not None:
        atomic_write_text(report_path, json.dumps(report, indent=2, default=str) + "\n")


def exit_code(report: dict) -> int:
    """0 when every item passed or was skipped with a stated reason; 1 when any failed (or skipped silently)."""
    for result in report["items"]:
        if result["status"] == "failed" or (result["status"] == "skipped" and not result.get("skip_reason")):
            return 1
        if result["status"] not in ("passed", "skipped", "failed"):
            return 1
    return 0


def format_table(report: dict) -> str:
    env = report.get("environment") or {}
    where = env.get("gpu_name") or ("CPU" if not str(report["settings"]["device"]).startswith("cuda") else NO_CUDA)
    lines = [f"gpu_check: {where}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), device "
             f"{report['settings']['device']}, precision {report['settings']['precision']}"
             f"{', quick' if report['settings']['quick'] else ''}",
             f"{'item':20s} {'status':8s} {'seconds':>8s}  result"]
    for r in report["items"]:
        text = r["error"] if r["status"] == "failed" else (r["skip_reason"] if r["status"] == "skipped"
                                                            else r["summary"] or "")
        lines.append(f"{r['name']:20s} {r['status']:8s} {r['seconds']:8.1f}  {str(text)[:100]}")
    s = report["summary"]
    lines.append(f"{s.get('passed', 0)} passed, {s.get('failed', 0)} failed, {s.get('skipped', 0)} skipped in "
                 f"{report.get('seconds', 0):.0f} s")
    return "\n".join(lines)
