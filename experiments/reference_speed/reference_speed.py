"""Is each method's training step at least 1.5x its reference implementation's, same machine, same window?

    python experiments/reference_speed/reference_speed.py --glow-ref /tmp/refs/glow-pytorch \
        --pggan-ref /tmp/refs/pytorch_GAN_zoo [--only glow pggan] [--rounds 3] [--steps N] [--warmup W] \
        [--quick] [--json experiments/reference_speed/result.json]

Per round: our step (pipeline.benchmark.train's setup at size "reference", mode "default": what
scripts/benchmark.py times), then the reference's own iteration, imported from a clone outside this repository;
each timed by time_steps (warm-up, median of N steps). Answer: the median over rounds of ours / reference img/s.
What each side runs: README.md beside this file. ``--quick``: tiny models, only to check that the code runs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from common.checkpoint import atomic_write_text
from common.cli import UserError, run_main
from common.distributed import native_bf16, seed_everything
from pipeline.benchmark.limits import count_flops, measure_limits_apart
from pipeline.benchmark.train import flags, flags_name, glow_setup, pggan_setup, time_steps

CPU = torch.device("cpu")
TARGET = 1.5  # the issue: each method at >= 1.5x its reference's img/s


def import_reference(root: str, names: list[str]) -> list:
    """The references are folders of scripts, not packages: import from the clone's root, then forget it."""
    path = str(Path(root).expanduser().resolve())
    sys.path.insert(0, path)
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as exc:
        raise UserError(f"{root}: cannot import the reference ({exc})") from exc
    finally:
        sys.path.remove(path)


def glow_reference(root: str, quick: bool, bf16: bool):
    """glow-pytorch train.py's iteration (i > 0) on a fixed random batch: (step, batch, resolution, params)."""
    model, train = import_reference(root, ["model", "train"])
    res, batch, n_flow, n_block = (16, 4, 2, 2) if quick else (32, 16, 8, 3)
    if quick:  # Flow passes AffineCoupling no filter_size: narrow its default 512 (quick only)
        model.AffineCoupling.__init__.__defaults__ = (32, True)
    n_bits, n_bins = 5, 2.0 ** 5
    glow = model.Glow(3, n_flow, n_block, affine=True, conv_lu=True)
    opt = torch.optim.Adam(glow.parameters(), lr=1e-4)  # train.py: optim.Adam(model.parameters(), lr=args.lr)
    image = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0))  # ToTensor's [0, 1]

    def dequantised():  # train.py: * 255, floor(/ 2 ** (8 - n_bits)), / n_bins - 0.5, + U[0, 1) / n_bins
        y = torch.floor(image * 255 / 2 ** (8 - n_bits)) / n_bins - 0.5
        return y + torch.rand_like(y) / n_bins

    with torch.no_grad():
        glow(dequantised())  # train.py's iteration 0: actnorm's data-dependent init

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            log_p, logdet, _ = glow(dequantised())
        loss, _, _ = train.calc_loss(log_p, logdet.mean(), res, n_bins)
        glow.zero_grad()
        loss.backward()
        opt.step()
        return loss
    return step, batch, res, sum(p.numel() for p in glow.parameters())


class FloatBetasAdam(torch.optim.Adam):
    """Shim: today's torch.optim.Adam rejects the GAN zoo's betas=[0, 0.99] (an int beside a float)."""

    def __init__(self, params, betas=(0.9, 0.999), **kwargs):
        super().__init__(params, betas=tuple(float(b) for b in betas), **kwargs)


def pggan_reference(root: str, quick: bool, bf16: bool):
    """GAN zoo ProgressiveGAN.optimizeParameters, fully grown (alpha 0), its standard PGAN config."""
    (progressive_gan,) = import_reference(root, ["models.progressive_gan"])
    progressive_gan.optim = SimpleNamespace(Adam=FloatBetasAdam)  # replaces only that module's `optim`
    width, res, batch = (32, 16, 4) if quick else (512, 32, 16)
    # models/trainer/standard_configurations/pgan_config.py: WGAN-GP, lambdaGP 10, epsilonD 0.001, mbstd, lr 1e-3
    gan = progressive_gan.ProgressiveGAN(dimLatentVector=width, depthScale0=width, miniBatchStdDev=True,
                                         lambdaGP=10.0, epsilonD=0.001, baseLearningRate=1e-3, useGPU=False)
    while gan.getSize()[0] < res:  # scales 4, 8, 16, 32 (depthScales 512)
        gan.addScale(width)
    assert gan.getOriginalG().alpha == 0 and gan.getOriginalD().alpha == 0  # no blending: the last phase
    real = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def step():  # D: real, fake, gradient penalty, epsilon drift, Adam; G: fake, Adam; EMA generator update
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return gan.optimizeParameters(real)
    return step, batch, res, sum(p.numel() for net in (gan.netG, gan.netD) for p in net.parameters())


# method -> (our setup, the reference, its repository, marker file of a clone, default (steps, warmup))
METHODS = {"glow": (glow_setup, glow_reference, "rosinality/glow-pytorch", "model.py", (10, 2)),
           "pggan": (pggan_setup, pggan_reference, "facebookresearch/pytorch_GAN_zoo", "models/progressive_gan.py",
                     (3, 1))}


def finite(out) -> bool:
    """Whether a step's result says it did the whole step (ours skips backward on a non-finite Glow loss)."""
    if hasattr(out, "applied"):
        return bool(out.applied)
    values = out.values() if isinstance(out, dict) else [out]
    return all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in values)


def measure(method: str, root: str, args, bf16: bool) -> dict:
    setup_fn, reference_fn, repository, _, (steps, warmup) = METHODS[method]
    steps, warmup = args.steps or steps, max(args.warmup if args.warmup is not None else warmup, 1)
    seed_everything(0)
    lazy = args.pggan_gp_every if method == "pggan" else 1
    extra = {"gp_every": lazy} if lazy > 1 else {}
    setup = setup_fn("synthetic", CPU, 16, 4, **extra) if args.quick else setup_fn("reference", CPU, **extra)
    f = flags("default", setup.train_cfg, CPU)
    ref_step, ref_batch, ref_res, ref_params = reference_fn(root, args.quick, bf16)
    one = setup.make_step(f)

    def ours():  # lazy penalty: whole blocks of gp_every iterations, one penalty step and gp_every - 1 without
        return [one() for _ in range(lazy)][-1]
    sides, bad = {"ours": (ours, setup.batch * lazy), "reference": (ref_step, ref_batch)}, []

    def checked(step, side):
        def run():
            out = step()
            if not finite(out):
                bad.append(side)
        return run
    # torch's flop counter over one step of each side (matmuls and convolutions, forward and backward): equal
    # counts say both sides do the same arithmetic; with the machine's limit they give each side's share of it
    flops = {side: count_flops(step) / batch for side, (step, batch) in sides.items()}
    rounds = []
    for index in range(args.rounds):
        row = {}
        for side, (step, batch) in sides.items():  # ours, then the reference, in every round
            t = time_steps(checked(step, side), steps, warmup, CPU)
            row[side] = {"step_s": round(t.seconds, 4), "img_per_s": round(batch / t.seconds, 3),
                         "first_step_s": round(t.first, 3), "non_finite_steps": bad.count(side),
                         "load1": round(os.getloadavg()[0], 2)}
            bad.clear()
        row["ratio"] = round(row["ours"]["img_per_s"] / row["reference"]["img_per_s"], 3)
        rounds.append(row)
        print(f"  {method:6s} round {index + 1}: ours {row['ours']['img_per_s']:9.3f} img/s, reference "
              f"{row['reference']['img_per_s']:9.3f} img/s, ratio {row['ratio']:.3f}", flush=True)
    median = statistics.median(r["ratio"] for r in rounds)
    what = f"pipeline.benchmark.train.{setup_fn.__name__}({setup.size!r}), mode default"
    if lazy > 1:
        what += f", lazy gradient penalty every {lazy} iterations (a timed step is {lazy} iterations)"
    return {"ours": {"what": what,
                     "precision": flags_name(f), "resolution": setup.resolution, "batch": setup.batch,
                     "params": setup.params},
            "reference": {"what": repository, "path": str(Path(root).expanduser().resolve()),
                          "precision": "bf16 autocast" if bf16 else "fp32", "resolution": ref_res,
                          "batch": ref_batch, "params": ref_params},
            "gflop_per_image": {side: round(v / 1e9, 3) for side, v in flops.items()},
            "steps": steps, "warmup": warmup, "rounds": rounds, "median_ratio": round(median, 3), "target": TARGET,
            "meets_target": None if args.quick else median >= TARGET}


def cpuinfo(key: str) -> str:
    """The first ``key`` line of /proc/cpuinfo ("" when there is none)."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glow-ref", help="root of a rosinality/glow-pytorch clone (model.py, train.py)")
    parser.add_argument("--pggan-ref", help="root of a facebookresearch/pytorch_GAN_zoo clone (models/)")
    parser.add_argument("--only", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps per side and round (default: glow 10, pggan 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, at least 1 (default: glow 2, pggan 1)")
    parser.add_argument("--pggan-gp-every", type=int, default=1, metavar="K",
                        help="ours with the lazy gradient penalty (pggan.gp_every K; another algorithm than the "
                             "reference's WGAN-GP): each timed step is K iterations")
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 step: only checks that it runs")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = min(args.rounds, 2), 1, 1
    if args.rounds < 1 or (args.steps is not None and args.steps < 1) or (args.warmup or 0) < 0:
        raise UserError("--rounds and --steps must be >= 1 and --warmup >= 0")
    if args.pggan_gp_every < 1:
        raise UserError(f"--pggan-gp-every {args.pggan_gp_every}: expected an integer >= 1")
    roots = {"glow": args.glow_ref, "pggan": args.pggan_ref}
    for method in args.only:  # check every path before the first minutes of timing
        marker = METHODS[method][3]
        if not roots[method] or not (Path(roots[method]).expanduser() / marker).is_file():
            raise UserError(f"--{method}-ref {roots[method] or '(missing)'}: not a clone of {METHODS[method][2]} "
                            f"(no {marker} there); see experiments/reference_speed/README.md")
    bf16 = native_bf16(CPU)
    info = {"cpu": cpuinfo("model name") or "unknown", "avx512_bf16": "avx512_bf16" in cpuinfo("flags").split(),
            "native_bf16": bf16, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(f"{info['cpu']} (avx512_bf16: {info['avx512_bf16']}), torch {info['torch']}, {info['threads']} threads",
          flush=True)
    limits = [measure_limits_apart(CPU)]  # the machine's matmul/conv limit before and after, same threads
    print(f"limit: {limits[0]['gflops']} GFLOP/s", flush=True)
    results = {method: measure(method, roots[method], args, bf16) for method in args.only}
    limits.append(measure_limits_apart(CPU))
    limit = max(lim["gflops"]["bf16" if bf16 else "fp32"] for lim in limits)
    print(f"limit: {limits[1]['gflops']} GFLOP/s")
    for r in results.values():
        rate = {side: statistics.median(x[side]["img_per_s"] for x in r["rounds"]) * r["gflop_per_image"][side]
                for side in ("ours", "reference")}
        r["fraction_of_limit"] = {side: round(v / limit, 3) for side, v in rate.items()}
        # the most any code doing the reference's arithmetic could be over it on this machine: the limit / its rate
        r["ceiling_ratio"] = round(limit / rate["reference"], 3)
    print(f"\n{'method':7s} {'ours precision':20s} {'reference':14s} {'ours img/s':>10s} {'ref img/s':>10s} "
          f"{'ratio':>6s}  >= {TARGET}x   share of the {limit:.0f} GFLOP/s limit: ours, reference; ceiling ratio")
    for method, r in results.items():
        ours, ref = (statistics.median(x[side]["img_per_s"] for x in r["rounds"]) for side in ("ours", "reference"))
        verdict = "(quick)" if args.quick else ("yes" if r["meets_target"] else "no")
        print(f"{method:7s} {r['ours']['precision']:20s} {r['reference']['precision']:14s} {ours:10.3f} "
              f"{ref:10.3f} {r['median_ratio']:6.3f}  {verdict:6s} {r['fraction_of_limit']['ours']:.2f}, "
              f"{r['fraction_of_limit']['reference']:.2f}; {r['ceiling_ratio']:.2f}")
    if args.json:
        out = {"machine": info, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "command": shlex.join(["python", *sys.argv]), "quick": args.quick, "rounds": args.rounds,
               "ratio": "ours img/s / reference img/s in each round; median_ratio: their median",
               "limits": limits, "limit_gflops": limit,
               "ceiling_ratio": "limit_gflops / (reference img/s x its GFLOP per image): the most any code doing "
                                "the reference's arithmetic could be over it here", "methods": results}
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
