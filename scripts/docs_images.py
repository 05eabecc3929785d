"""Copy the demo's grids into docs/images/ (small PNGs the README shows), after `make demo`.

    python scripts/docs_images.py

Only files that exist are copied; each is re-quantised to a 128-colour palette to keep the repository small.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from common.checkpoint import atomic_path

REPO = Path(__file__).resolve().parents[1]
IMAGES = {
    "synthetic_samples.png": "runs/demo/synthetic_samples.png",
    "vae_smile.png": "runs/vae/synthetic/edits/Smiling-mean.png",
    "vae_smile_keep_mouth.png": "runs/vae/synthetic/edits/Smiling-keep-Mouth_Slightly_Open-mean.png",
    "vae_pose.png": "runs/vae/synthetic/edits/pose-cflow.png",
    "glow_smile.png": "runs/glow/synthetic/edits/Smiling-mean.png",
    "glow_smile_keep_mouth.png": "runs/glow/synthetic/edits/Smiling-keep-Mouth_Slightly_Open-mean.png",
    "glow_pose.png": "runs/glow/synthetic/edits/pose-cflow.png",
    "pggan_smile.png": "runs/pggan/synthetic/edits/Smiling-boundary.png",
    "pggan_pose.png": "runs/pggan/synthetic/edits/pose-boundary.png",
    "score_vs_strength.png": "runs/evaluation/images/score_vs_strength.png",
    "vae_samples_smile.png": "runs/vae/synthetic/edits/samples/Smiling-mean.png",
    "pggan_test_images_smile.png": "runs/pggan/synthetic/edits/test-images/Smiling-boundary.png",
    "vae_turn.png": "runs/evaluation/images/vae-turn.png",
    # not part of the demo (it inverts 8 frames): python scripts/evaluate.py --runs runs/pggan/synthetic
    # --attributes pose --num 8 --invert 0 --fd-images 50 --turn-gan --out runs/evaluation-gan-turn
    "pggan_turn.png": "runs/evaluation-gan-turn/images/pggan-turn.png",
}


def main() -> int:
    out = REPO / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    for name, source in IMAGES.items():
        path = REPO / source
        if not path.exists():
            print(f"skip {name}: {source} does not exist (run make demo)")
            continue
        image = Image.open(path).convert("RGB").quantize(colors=128)
        with atomic_path(out / name) as tmp:
            image.save(tmp, format="PNG", optimize=True)
        print(f"wrote docs/images/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
