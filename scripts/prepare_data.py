"""Decode CelebA (or the synthetic stand-in, or a folder of your own photos) once into the fast prepared cache
that every training reads.

    python scripts/prepare_data.py --root data/celeba --resolution 64 [--out DIR] [--workers 2] [--skip-bad]
        [--only-present] [--upscale]
    python scripts/prepare_data.py --root my_faces/ --align [--labels labels.csv] --resolution 64

The layout (official, torchvision's ``celeba/`` level, or Kaggle's CSV files) is detected and printed. A resized
copy (e.g. 89x109) or CelebA's PNG copy is read as it is: the face crop scales with the images. The
cache goes to ``data/cache/<root name>_<R>`` unless ``--out`` is given; a complete cache built from the same
label files at the same resolution is reused, a stale one is rebuilt. See ``common/cache.py`` for the format.

``--align``: ROOT is a folder of any face photos, with no CelebA label files. The largest face of each is found,
aligned to CelebA's frame (5 landmarks, which also give the yaw) and cropped; photos with no face are left out
and listed in the manifest. ``--labels FILE.csv`` (``image_id``, then any of CelebA's 40 attribute names as +1/-1
or 0/1, blank = unknown; optional ``identity`` and ``partition`` columns) gives attributes; without a partition
the split is a hash of the file name (about 80/10/10). See docs/own-photos.md.
"""

from __future__ import annotations

import argparse

from common.cache import prepare_cache
from common.cli import UserError, run_main
from common.photo_folder import prepare_aligned_folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True,
                        help="CelebA folder (holding img_align_celeba/ and list_*.txt), or with --align a folder "
                             "of face photos")
    parser.add_argument("--resolution", type=int, required=True, help="output image size R (R x R), e.g. 64")
    parser.add_argument("--out", default=None, help="cache folder (default: <root parent>/cache/<root name>_<R>)")
    parser.add_argument("--workers", type=int, default=2, help="decoding (or face detection) processes (default 2)")
    parser.add_argument("--align", action="store_true",
                        help="ROOT holds any face photos: detect, align and crop each one's largest face")
    parser.add_argument("--labels", default=None, metavar="FILE.csv",
                        help="with --align: attributes per photo (image_id + CelebA attribute names, +1/-1 or 0/1, "
                             "blank = unknown; optional identity and partition columns)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable images (recorded in manifest.json) instead of stopping")
    parser.add_argument("--only-present", action="store_true",
                        help="go on with the listed images the folder holds (a partial download; recorded in the "
                             "manifest) instead of stopping")
    parser.add_argument("--upscale", action="store_true",
                        help="allow a --resolution above the face crop's source pixels (64 from an 89x109 copy)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    if args.align:
        given = [flag for flag, on in (("--skip-bad", args.skip_bad), ("--only-present", args.only_present),
                                       ("--upscale", args.upscale)) if on]
        if given:
            raise UserError(f"{', '.join(given)}: only for CelebA folders; with --align, photos with no face (or "
                            "unreadable) are always left out and listed in the manifest")
        prepare_aligned_folder(args.root, args.resolution, out=args.out, labels=args.labels, workers=args.workers,
                               progress=not args.no_progress)
        return 0
    if args.labels:
        raise UserError("--labels: only with --align (a CelebA folder's labels are its list_*.txt files)")
    prepare_cache(args.root, args.resolution, out=args.out, workers=args.workers, skip_bad=args.skip_bad,
                  progress=not args.no_progress, only_present=args.only_present, upscale=args.upscale)
    return 0


if __name__ == "__main__":
    run_main(main)
