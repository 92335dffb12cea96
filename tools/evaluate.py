"""Derain a RainTrainH-layout test folder (rain-N.png / norain-N.png) and compare with the input.

Example:
    python tools/evaluate.py --opt options/memd_demo.yml \
        --checkpoint experiments/memd_demo/models/net_g_latest.pth \
        --data datasets/synthetic_rain/test --out results/demo --min-gain-db 3
"""

import argparse
import os
import sys

from erl_plugin.evaluation import PROTOCOL, evaluate, format_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opt", required=True, help="options file whose network_g built the checkpoint")
    parser.add_argument("--checkpoint", required=True, help="BasicSR checkpoint (net_g_*.pth)")
    parser.add_argument("--data", required=True, help="folder with rain-N.png and norain-N.png")
    parser.add_argument("--out", required=True, help="folder for scores.csv, summary.md, comparison.png")
    parser.add_argument("--label", default="MEMD", help="name of the model in the table")
    parser.add_argument("--show", type=int, default=4, help="images in comparison.png")
    parser.add_argument(
        "--min-gain-db",
        type=float,
        default=None,
        help="fail unless the model beats the rainy input by this PSNR",
    )
    args = parser.parse_args()
    try:
        means = evaluate(args.opt, args.checkpoint, args.data, args.out, label=args.label, show=args.show)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(f"{args.data}", means))
    gain = means[args.label].psnr - means["rainy input"].psnr
    print(f"\nPSNR gain over the rainy input: {gain:+.2f} dB ({PROTOCOL})")
    print(f"side by side (rainy | {args.label} | clean): {os.path.join(args.out, 'comparison.png')}")
    if args.min_gain_db is not None and gain < args.min_gain_db:
        print(f"error: the gain is below --min-gain-db {args.min_gain_db}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
