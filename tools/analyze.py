"""Analyse how ERL-Net changes de-raining results compared with a baseline (paper, Section 4.3).

Writes per_image.csv, summary.md, improvement.png (Fig. 3 style shares) and hardest/<name>.png into
--out, and prints the summary; every number names the protocol (default: paper, the authors' own).

Example:
    python tools/analyze.py results/memd results/erl datasets/test/clean datasets/test/rainy \
        --out results/analysis --protocol paper --hardest 4
"""

import argparse
import os
import sys

from erl_plugin.evaluation.analysis import DEFAULT_PROTOCOL, analyze, format_summary
from erl_plugin.metrics.protocols import PROTOCOLS
from erl_plugin.utils.outputs import output_lock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline_dir", metavar="BASELINE_DIR", help="de-rained outputs of the baseline (MEMD)")
    parser.add_argument("erl_dir", metavar="ERL_DIR", help="de-rained outputs of ERL-Net")
    parser.add_argument("clean_dir", metavar="CLEAN_DIR", help="clean targets")
    parser.add_argument(
        "rainy_dir", metavar="RAINY_DIR", nargs="?", default=None, help="rainy inputs (required unless --masks)"
    )
    parser.add_argument("--out", required=True, help="folder for per_image.csv, summary.md, improvement.png, hardest/")
    parser.add_argument(
        "--protocol", default=DEFAULT_PROTOCOL, help=f"PSNR/SSIM/Y protocol: {', '.join(PROTOCOLS)} (default: paper)"
    )
    parser.add_argument("--masks", default=None, help="binary rain masks with the same names (nonzero = rain)")
    parser.add_argument("--hardest", type=int, default=4, help="overlays for this many lowest-baseline-PSNR images")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args()
    try:
        with output_lock(args.out):
            analysis = analyze(
                args.baseline_dir,
                args.erl_dir,
                args.clean_dir,
                args.rainy_dir,
                out_dir=args.out,
                protocol=args.protocol,
                masks_dir=args.masks,
                hardest=args.hardest,
                progress=not args.no_progress,
            )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(analysis))
    print()
    print(f"written to {os.path.abspath(args.out)}: per_image.csv, summary.md, improvement.png, hardest/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
