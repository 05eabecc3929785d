"""Generate the synthetic CelebA-format face set (what tests, CI and the demo train on).

    python scripts/make_synthetic_celeba.py --out data/synthetic --num 10000 --seed 0 [--layout official|kaggle]
        [--workers 2]

Writes CelebA's own layout and file formats (``img_align_celeba/000001.jpg`` ... at 178x218, the five label
files, or the Kaggle CSV layout) plus ``synthetic_factors.txt`` with the true factors; see common/synthetic.py
for the factors, the labels and what they are correlated with. The same seed and num give the same bytes
whatever --workers is.
"""

from __future__ import annotations

import argparse
import time

from common.cli import run_main
from common.synthetic import LAYOUTS, split_sizes, write_synthetic_celeba


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write (created; label files are replaced)")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--layout", choices=LAYOUTS, default="official",
                        help="official .txt files (default) or the Kaggle CSV layout")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    args = parser.parse_args()
    start = time.perf_counter()
    out = write_synthetic_celeba(args.out, args.num, args.seed, layout=args.layout, workers=args.workers,
                                 progress=True)
    seconds = time.perf_counter() - start
    train, valid, test = split_sizes(args.num)
    print(f"wrote {args.num} synthetic faces ({args.layout} layout; train {train}, valid {valid}, test {test}) "
          f"to {out} in {seconds:.1f} s ({args.num / seconds:.0f} images/s with {args.workers} workers)")
    return 0


if __name__ == "__main__":
    run_main(main)
