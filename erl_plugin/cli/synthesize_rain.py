"""Write a synthetic paired rain dataset (Rain100H layout) from local photos; no download needed.

Two kinds:
- a fixed dataset (train and test splits of a preset), for LMDB and folder training;
- ``--generalization``: the validation and plateau splits (training photos, the on-the-fly training domain) and the
  generalization test split (photos never trained on, rain partly outside the training domain) that
  ``tools/study.py`` and ``make demo`` evaluate on.

Examples:
    erl-synthesize-rain --out datasets/synthetic_rain --preset heavy --lmdb
    erl-synthesize-rain --generalization --out datasets/rain_generalization
"""

from __future__ import annotations

import argparse
import sys

from erl_plugin.data.synthetic_dataset import synthesize_generalization_splits
from erl_plugin.data.synthetic_rain import PRESETS, synthesize_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.add_argument(
        "--generalization",
        action="store_true",
        help="write the validation and generalization test splits (val/, test/) instead of a fixed dataset",
    )
    parser.add_argument("--source", help="folder of clean photos (default: scikit-image's bundled photos)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="heavy", help="rain preset")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--num-test-sources", type=int, default=2, help="photos kept for the test split")
    parser.add_argument("--patch-size", type=int, default=128, help="side of the square train crops")
    parser.add_argument("--patches-per-image", type=int, default=4, help="train crops per train photo")
    parser.add_argument("--variants-per-patch", type=int, default=3, help="rain renderings per train crop")
    parser.add_argument("--test-variants", type=int, default=4, help="rain renderings per test photo")
    parser.add_argument("--lmdb", action="store_true", help="also write <split>/lq.lmdb and <split>/gt.lmdb")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the synthesis; returns the exit status (2 for bad input)."""
    args = parse_args(argv)
    try:
        if args.generalization:
            summary = synthesize_generalization_splits(
                args.out, seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress
            )
        else:
            summary = synthesize_dataset(
                args.out,
                source=args.source,
                preset=args.preset,
                seed=args.seed,
                num_test_sources=args.num_test_sources,
                patches_per_image=args.patches_per_image,
                patch_size=args.patch_size,
                variants_per_patch=args.variants_per_patch,
                test_variants=args.test_variants,
                lmdb=args.lmdb,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.generalization and summary.get("already_written"):
        print(f"{args.out}: already holds these splits (synthesis.json records the same settings); nothing written")
    elif args.generalization:
        print(
            f"wrote {summary['val']['pairs']} validation and {summary['plateau']['pairs']} plateau pairs (training "
            f"photos, {summary['val']['domain']} rain) "
            f"and {summary['test']['pairs']} test pairs (photos never trained on, "
            f"{' and '.join(summary['test']['domains'])} rain) to {args.out}"
        )
    else:
        print(
            f"wrote {summary['train']['pairs']} train and {summary['test']['pairs']} test pairs "
            f"({summary['preset']} rain, seed {summary['seed']}) to {args.out}"
        )
    return 0
