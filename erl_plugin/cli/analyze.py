"""Analyse how ERL-Net changes de-raining results compared with a baseline (paper, Section 4.3).

Writes per_image.csv, summary.md, improvement.png (Fig. 3 style shares) and hardest/<name>.png into
--out, and prints the summary; every number names the protocol (default: paper, the authors' own).

The clean and rainy images come from a test set in any layout (--data, as the datasets read it; an
output matches a pair by the pair's name, alone or with BasicSR's _<suffix>), or from folders matched
by file name (CLEAN_DIR RAINY_DIR).

Example:
    erl-analyze results/memd results/erl --data datasets/Rain100H/test \
        --out results/analysis --protocol paper --hardest 4
"""

import argparse
import os
import sys

from erl_plugin.data.layouts import LAYOUTS
from erl_plugin.evaluation.analysis import DEFAULT_PROTOCOL, analyze, format_summary
from erl_plugin.metrics.protocols import PROTOCOLS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline_dir", metavar="BASELINE_DIR", help="de-rained outputs of the baseline (MEMD)")
    parser.add_argument("erl_dir", metavar="ERL_DIR", help="de-rained outputs of ERL-Net")
    parser.add_argument(
        "clean_dir", metavar="CLEAN_DIR", nargs="?", default=None, help="clean targets (or --data), matched by name"
    )
    parser.add_argument(
        "rainy_dir", metavar="RAINY_DIR", nargs="?", default=None, help="rainy inputs (with CLEAN_DIR, unless --masks)"
    )
    parser.add_argument(
        "--data", help="the test set the outputs come from: any layout (detected, or --layout), or lq.lmdb + gt.lmdb"
    )
    parser.add_argument("--layout", choices=sorted(LAYOUTS), help="the layout of --data (default: detected)")
    parser.add_argument("--out", required=True, help="folder for per_image.csv, summary.md, improvement.png, hardest/")
    parser.add_argument(
        "--protocol", default=DEFAULT_PROTOCOL, help=f"PSNR/SSIM/Y protocol: {', '.join(PROTOCOLS)} (default: paper)"
    )
    parser.add_argument("--masks", default=None, help="binary rain masks with the same names (nonzero = rain)")
    parser.add_argument("--hardest", type=int, default=4, help="overlays for this many lowest-baseline-PSNR images")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace the files an earlier run wrote in --out")
    args = parser.parse_args(argv)
    try:
        analysis = analyze(
            args.baseline_dir,
            args.erl_dir,
            args.clean_dir,
            args.rainy_dir,
            out_dir=args.out,
            data=args.data,
            layout=args.layout,
            protocol=args.protocol,
            masks_dir=args.masks,
            hardest=args.hardest,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(analysis))
    print()
    print(f"written to {os.path.abspath(args.out)}: per_image.csv, summary.md, improvement.png, hardest/")
    return 0
