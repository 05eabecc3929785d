"""Compare the methods' edits with one judge: metrics.json and a readable report.md with tables, grids and plots.

    python scripts/evaluate.py [--runs runs/vae/synthetic runs/glow/synthetic runs/pggan/synthetic]
        [--judge runs/predictor/synthetic-judge] [--num 64] [--out runs/evaluation]
        [--attributes Smiling Narrow_Eyes Mouth_Slightly_Open pose] [--keep Smiling=Mouth_Slightly_Open]
        [--range -3 3 --steps 7] [--invert 8] [--fd-images 500] [--turn-faces 4 [--turn-gan]]
        [--inception WEIGHTS.pth]

The judge is a SECOND attribute predictor (another seed than the one that found the GAN's directions), so no
method is graded by the instrument it was fitted to. For every run (missing default runs are skipped with a
note) and attribute: --num faces (encoded test images for the VAE and Glow; random samples for the GAN, whose
inversion is slow: only --invert test images are inverted, for the reconstruction PSNR) are walked from
-max to +max along the run's saved direction (found and saved in RUN/directions/ when missing), decoded, and
re-scored by the judge. Measured: edit success both ways, monotonicity and slope of the judge's score, leakage
into every judged attribute with and without --keep, content preservation (pixels and judge features between
the unedited reconstruction and the walk's ends), reconstruction PSNR, Frechet distance of samples in the
judge's feature space (Inception FID only with --inception: nothing is downloaded), and, when the judge has
synthetic factor heads, how the predicted smile and yaw factors move. On a synthetic cache, a turn check: faces
rendered turning their heads, the latent line between each turn's encoded ends decoded and compared with the
true frames and with a pixel cross-fade (can the latent space turn a head at all? --turn-gan adds the GAN,
whose ends must be inverted). Writes OUT/metrics.json, OUT/report.md
and OUT/images/*.png; the report's discussion is generated from the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.attributes import resolve_attribute
from common.cli import UserError, run_main
from pipeline.evaluation import (
    DEFAULT_ATTRIBUTES,
    EvaluationOptions,
    evaluate_runs,
    make_strengths,
    parse_keep_map,
    parse_pose_methods,
    write_outputs,
)

DEFAULT_RUNS = ("runs/vae/synthetic", "runs/glow/synthetic", "runs/pggan/synthetic")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=None, help="run folders (default: those of "
                   f"{', '.join(DEFAULT_RUNS)} that exist)")
    p.add_argument("--judge", default="runs/predictor/synthetic-judge", help="the judging predictor run")
    p.add_argument("--predictor", default=None, help="predictor that FINDS the GAN's directions (default: the "
                   "PGGAN config's edit.predictor, runs/predictor/synthetic)")
    p.add_argument("--num", type=int, default=64, help="faces edited per method and attribute (default 64)")
    p.add_argument("--out", default="runs/evaluation", help="output folder (default runs/evaluation)")
    p.add_argument("--attributes", nargs="+", default=list(DEFAULT_ATTRIBUTES), help="attributes to edit")
    p.add_argument("--keep", action="append", default=None, metavar="ATTR=KEPT[,KEPT2]",
                   help="conditional editing to compare (default Smiling=Mouth_Slightly_Open)")
    p.add_argument("--range", nargs=2, type=float, default=(-3.0, 3.0), metavar=("LO", "HI"),
                   help="edit strengths (default -3 3; must straddle 0)")
    p.add_argument("--steps", type=int, default=7, help="strengths along the walk (default 7)")
    p.add_argument("--invert", type=int, default=8, help="test images inverted for the GAN's PSNR (default 8)")
    # The config's inversion (200 steps x 8 random starts) takes minutes on a CPU; the evaluation needs only a
    # PSNR estimate, so it defaults to a quarter of the starts and half the steps (recorded in metrics.json).
    p.add_argument("--inversion-steps", type=int, default=100, help="GAN inversion steps (default 100; 0: config)")
    p.add_argument("--inversion-starts", type=int, default=2,
                   help="GAN inversion random starts per image (default 2; 0: the config's)")
    p.add_argument("--samples", type=int, default=None, help="GAN samples scored to find missing directions "
                   "(default: the config's edit.samples)")
    p.add_argument("--fd-images", type=int, default=500, help="real and generated images per Frechet distance")
    p.add_argument("--inception", default=None, metavar="WEIGHTS.pth", help="torchvision inception_v3 state "
                   "dict on disk: also report standard Inception FID (nothing downloads)")
    p.add_argument("--turn-faces", type=int, default=4, help="synthetic faces rendered turning their head, to "
                   "check the VAE's and Glow's latent line between the turn's ends against the true frames "
                   "(default 4; 0: off; synthetic caches only)")
    p.add_argument("--turn-gan", action="store_true", help="also run that check for the GAN (inverts the turns' "
                   "end frames: ~10 s per frame on 2 CPU cores)")
    p.add_argument("--grid-rows", type=int, default=4, help="faces per grid image (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of GAN samples and generated FD samples")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--max-train-images", type=int, default=20000,
                   help="training images encoded when a VAE/Glow direction must be found (default 20000)")
    p.add_argument("--pose-method", nargs="+", default=[], metavar="METHOD=HOW",
                   help="how a method's pose is edited, e.g. glow=mean (default: the registry's, cflow for vae and "
                   "glow, boundary for pggan)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from common.editing import resolve_device
    from common.predictor import load_predictor
    from pipeline.registry import load_method, read_run_method

    if args.num < 2:
        raise UserError(f"--num {args.num}: expected at least 2 faces")
    if args.steps < 3 or not args.range[0] < 0 < args.range[1]:
        raise UserError(f"--range {args.range[0]:g} {args.range[1]:g} --steps {args.steps}: expected LO < 0 < HI "
                        "and at least 3 steps")
    if args.fd_images < 2:
        raise UserError(f"--fd-images {args.fd_images}: expected at least 2")
    attributes = list(dict.fromkeys(resolve_attribute(a) for a in args.attributes))
    options = EvaluationOptions(
        attributes=attributes, keep=parse_keep_map(args.keep, attributes),
        strengths=make_strengths(args.range[0], args.range[1], args.steps), num=args.num, invert=args.invert,
        inversion_steps=args.inversion_steps, inversion_starts=args.inversion_starts, fd_images=args.fd_images,
        inception=args.inception, turn_faces=args.turn_faces, turn_gan=args.turn_gan, grid_rows=args.grid_rows,
        seed=args.seed, batch_size=args.batch_size)
    device = resolve_device(args.device)
    judge_dir = Path(args.judge)
    if not (judge_dir / "checkpoints").is_dir():
        raise UserError(f"{judge_dir}: judge predictor run not found; train it with python scripts/"
                        "train_predictor.py --config configs/predictor/synthetic.yaml --set train.seed=1 --out "
                        f"{judge_dir}")
    judge = load_predictor(judge_dir, device)
    notes, runs = [], []
    for run in args.runs or DEFAULT_RUNS:
        try:
            read_run_method(run)
            runs.append(run)
        except UserError as exc:
            notes.append(f"skipped {exc}")
            print(f"note: skipped {exc}", file=sys.stderr)
    if not runs:
        raise UserError("no run to evaluate: " + "; ".join(notes))

    pose_methods = parse_pose_methods(args.pose_method)

    def load(run):
        model, find_direction, info = load_method(run, device=device, predictor_run=args.predictor,
                                                  samples=args.samples, max_train_images=args.max_train_images,
                                                  seed=args.seed)
        info["pose_method"] = pose_methods.get(info["method"], info["pose_method"])
        return model, find_direction, info

    out = Path(args.out)
    report, plot_data = evaluate_runs(runs, load, judge, judge_dir, options, out, notes=notes,
                                      command="python scripts/evaluate.py " + " ".join(sys.argv[1:]))
    write_outputs(report, plot_data, options.strengths, out)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.md'} ({report['seconds']:.0f} s)")
    for name, result in report["methods"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v['status']}" for k, v in result["targets"].items()))
    return 0


if __name__ == "__main__":
    run_main(main)
