"""A contact sheet of prepared images with their labels: what the models will be trained on, at a glance.

    python scripts/contact_sheet.py --cache data/cache/synthetic_32 --out runs/demo/synthetic_samples.png

Each cell shows one image of the chosen split with the attributes that matter for expression editing
(smiling, mouth open, narrow eyes, glasses, male) and its yaw score.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common.attributes import attribute_index
from common.cache import CelebACache
from common.cli import run_main
from common.grids import image_grid

SHOWN = (("Smiling", "smile"), ("Mouth_Slightly_Open", "open"), ("Narrow_Eyes", "narrow"),
         ("Eyeglasses", "glasses"), ("Male", "male"))


def caption(attributes: torch.Tensor, yaw: float) -> str:
    """Short label of an image: the positive expression attributes and the yaw score."""
    on = [short for name, short in SHOWN if attributes[attribute_index(name)] > 0.5]
    return f"{' '.join(on) or '-'} yaw {yaw:+.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="prepared cache folder (scripts/prepare_data.py)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--split", default="train", choices=["train", "valid", "test", "all"])
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--cols", type=int, default=8)
    args = parser.parse_args()
    dataset = CelebACache(args.cache, args.split)
    count = min(len(dataset), args.rows * args.cols)
    items = [dataset[i] for i in range(count)]
    images = torch.stack([item["image"] for item in items])  # [N, 3, R, R]
    labels = [caption(item["attributes"], float(item["yaw"])) for item in items]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow=args.cols, path=args.out, labels=labels)
    print(f"wrote {args.out} ({count} images of the {args.split} split with their labels)")
    return 0


if __name__ == "__main__":
    run_main(main)
