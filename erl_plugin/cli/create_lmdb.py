"""Convert a paired deraining data set (Rain100H, Rain200H, Rain13K, DDN, DID, Raindrop, ...) into BasicSR LMDBs.

Writes DST/lq.lmdb, DST/gt.lmdb, DST/pairs.txt and DST/sources.txt (see erl_plugin.data.convert); the source
layouts are documented in erl_plugin.data.layouts.

Example:
    erl-create-lmdb --layout ddn datasets/DDN-Data/train datasets/ddn_train --workers 4
    erl-create-lmdb --verify datasets/ddn_train
"""

from __future__ import annotations

import argparse
import sys

from erl_plugin.data.convert import convert_dataset, verify_dataset
from erl_plugin.data.layouts import LAYOUTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; exits with status 2 (argparse's ``error:``) for a wrong combination."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="%(prog)s --layout LAYOUT SRC DST [options] | %(prog)s --verify DST",
    )
    parser.add_argument("src", nargs="?", metavar="SRC", help="data set folder (a pair-list file for --layout list)")
    parser.add_argument("dst", nargs="?", metavar="DST", help="output folder")
    parser.add_argument("--layout", choices=list(LAYOUTS), help="how SRC is organised")
    parser.add_argument("--verify", metavar="DST", help="check a converted folder instead of converting")
    parser.add_argument("--lq-dir", default="input", help="rainy folder for --layout pairs (default: input)")
    parser.add_argument("--gt-dir", default="target", help="clean folder for --layout pairs (default: target)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty DST")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad pairs (listed in DST/skipped.txt)")
    parser.add_argument(
        "--allow-identity", action="store_true", help="write pairs whose rainy and clean files are identical"
    )
    parser.add_argument("--workers", type=int, default=1, help="decoding/encoding processes (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.verify is not None:
        if args.src is not None or args.layout is not None:
            parser.error("--verify DST takes no SRC, DST or --layout")
    elif args.layout is None or args.dst is None:
        parser.error("give --layout LAYOUT SRC DST, or --verify DST")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Convert or verify; returns the exit status (1: verification failed, 2: bad input, 130: interrupted)."""
    args = parse_args(argv)
    if args.verify is not None:
        report = verify_dataset(args.verify)
        if report.problems:
            print(f"{args.verify}: {len(report.problems)} problem(s)", file=sys.stderr)
            for problem in report.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        print(f"OK {args.verify}: {report.pairs} pairs, {report.lq_images} lq and {report.gt_images} gt images")
        return 0
    try:
        summary = convert_dataset(
            args.layout,
            args.src,
            args.dst,
            lq_dir=args.lq_dir,
            gt_dir=args.gt_dir,
            overwrite=args.overwrite,
            skip_bad=args.skip_bad,
            allow_identity=args.allow_identity,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; nothing was written to {args.dst}", file=sys.stderr)
        return 130
    print(f"wrote {summary.pairs} pairs ({summary.lq_images} lq, {summary.gt_images} gt images) to {summary.dst}")
    if args.skip_bad:
        print(f"skipped {len(summary.skipped)} bad pair(s); see {summary.dst / 'skipped.txt'}")
        for lq, _, reason in summary.skipped:
            print(f"  {lq}: {reason}")
    return 0
