"""Score checkpoints on original test folders under named protocols; write a leaderboard.

Writes leaderboard.md and leaderboard.csv (one row per model x test set: PSNR/SSIM per protocol,
parameters, GFLOPs (MACs) at 1x3x320x320, ms/image on the named device) into --out; with --matrix
also matrix.md/.csv (trained-on x test set under the first protocol); with --reported the published
numbers as rows of their own (source "reported (<citation>)").

Example:
    erl-leaderboard --models models.yml --testsets testsets.yml --out results/leaderboard \
        --protocols basicsr paper matlab --matrix --reported docs/reported.yml

MODELS.yml: a list of {name, options, checkpoint, trained_on (optional)}.
TESTSETS.yml: a list of {name, dataroot, layout?}: any layout the datasets read (detected when layout is
left out; lq_dir/gt_dir for the pairs layout), or a folder holding lq.lmdb + gt.lmdb.
"""

import argparse
import sys

import torch

from erl_plugin.engine.entry import set_cpu_threads
from erl_plugin.evaluation.leaderboard import (
    leaderboard_files,
    leaderboard_markdown,
    read_models,
    read_reported,
    read_test_sets,
    run_leaderboard,
    write_leaderboard,
)
from erl_plugin.metrics.protocols import PROTOCOLS
from erl_plugin.utils.outputs import OutputFolder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", required=True, help="YAML list of {name, options, checkpoint, trained_on?}")
    parser.add_argument("--testsets", required=True, help="YAML list of {name, dataroot, layout?}")
    parser.add_argument("--out", required=True, help="folder for leaderboard.md/.csv (and matrix.md/.csv)")
    parser.add_argument(
        "--protocols", nargs="+", default=list(PROTOCOLS), help=f"any of {', '.join(PROTOCOLS)} (default: all)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device, e.g. cpu or cuda (default: cuda when available, else cpu)",
    )
    parser.add_argument("--matrix", action="store_true", help="also write the trained-on x test-set matrix")
    parser.add_argument("--reported", help="published numbers to add as 'reported' rows (docs/reported.yml)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace the files an earlier run wrote in --out")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: OMP_NUM_THREADS, else every core)"
    )
    args = parser.parse_args(argv)
    try:
        set_cpu_threads(args.threads)  # ms/image depends on it; the device column names the count
        models, test_sets = read_models(args.models), read_test_sets(args.testsets)
        inputs = [args.models, args.testsets, *(t.dataroot for t in test_sets)]
        inputs += [path for m in models for path in (m.options, m.checkpoint)]
        reported = read_reported(args.reported) if args.reported else []
        with OutputFolder(args.out, tool="leaderboard", overwrite=args.overwrite, inputs=inputs) as out:
            out.claim(leaderboard_files(args.matrix))
            rows = run_leaderboard(models, test_sets, args.protocols, args.device, progress=not args.no_progress)
            paths = write_leaderboard(out, rows + reported, args.protocols, matrix=args.matrix)
    except (OSError, ValueError, KeyError) as error:  # OptionsError (bad --threads) is a ValueError
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(leaderboard_markdown(rows + reported, args.protocols))
    print(f"written: {', '.join(paths)}")
    return 0
