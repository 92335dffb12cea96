"""Derain a test folder (any layout the datasets read, or lq.lmdb + gt.lmdb) with one or more models.

With --data (pairs of rainy and clean images): prints PSNR/SSIM of the rainy input and of each model,
naming the protocol, and writes scores.csv, summary.md and comparison.png (rainy | models | clean) into --out.

With --no-reference (rainy photos that have no clean image): scores the input and each model's output
with NIQE, a no-reference metric (lower is better; not comparable to PSNR/SSIM, and weak evidence: it
rates how natural an image looks, not its fidelity), and writes niqe.csv, niqe.md and comparison.png
(rainy | models). Photos smaller than NIQE's two 96x96 blocks are listed as not scored.

Examples:
    erl-evaluate --data datasets/synthetic_rain/test --out results/demo \
        --model MEMD options/erl_demo.yml experiments/erl_demo/models/memd_stage1.pth \
        --model ERL-Net options/erl_demo.yml experiments/erl_demo/models/net_g_latest.pth --min-gain-db 3
    erl-evaluate --no-reference my_photos/ --out results/photos \
        --model ERL-Net options/erl_demo.yml experiments/erl_demo/models/net_g_latest.pth
"""

import argparse
import os
import sys

from erl_plugin.data.layouts import LAYOUTS
from erl_plugin.evaluation.evaluate import PROTOCOL, evaluate, evaluate_no_reference
from erl_plugin.metrics.no_reference import NIQE_PROTOCOL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        nargs=3,
        action="append",
        required=True,
        metavar=("LABEL", "OPTIONS", "CHECKPOINT"),
        help="a model: its name in the table, the options file whose network_g built it, its checkpoint",
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--data",
        help="test folder of rainy/clean pairs: any layout (detected, or --layout), or one holding lq.lmdb + gt.lmdb",
    )
    data.add_argument(
        "--no-reference",
        nargs="+",
        metavar="PHOTOS",
        help="rainy photos without clean images (files and/or folders): scored with NIQE, no-reference",
    )
    parser.add_argument("--layout", choices=sorted(LAYOUTS), help="the --data folder's layout (default: detected)")
    parser.add_argument(
        "--out",
        required=True,
        help="folder for scores.csv, summary.md, comparison.png (--no-reference: niqe.csv, niqe.md, comparison.png)",
    )
    parser.add_argument("--show", type=int, default=4, help="images in comparison.png")
    parser.add_argument("--overwrite", action="store_true", help="replace the files an earlier run wrote in --out")
    parser.add_argument(
        "--min-gain-db", type=float, default=None, help="fail unless every model beats the rainy input by this PSNR"
    )
    args = parser.parse_args(argv)
    if args.no_reference is not None:
        for option, value in (("--layout", args.layout), ("--min-gain-db", args.min_gain_db)):
            if value is not None:
                parser.error(f"{option} needs clean images: it goes with --data, not --no-reference")
        return _no_reference(args)
    try:
        models = [tuple(model) for model in args.model]
        means = evaluate(models, args.data, args.out, args.show, args.layout, overwrite=args.overwrite)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with open(os.path.join(args.out, "summary.md"), encoding="utf-8") as summary:
        print(summary.read().rstrip())  # the table, with the network each checkpoint was scored as
    rainy = means["rainy input"].psnr
    print()
    for label, _, _ in args.model:
        print(f"{label}: {means[label].psnr - rainy:+.2f} dB PSNR over the rainy input ({PROTOCOL})")
    labels = " | ".join(label for label, _, _ in args.model)
    print(f"side by side (rainy | {labels} | clean): {os.path.join(args.out, 'comparison.png')}")
    short = [label for label, _, _ in args.model if means[label].psnr - rainy < (args.min_gain_db or float("-inf"))]
    if short:
        print(f"error: {', '.join(short)} gain less than --min-gain-db {args.min_gain_db}", file=sys.stderr)
        return 1
    return 0


def _no_reference(args: argparse.Namespace) -> int:
    """``--no-reference``: NIQE of the photos and of each model's outputs; returns the exit status."""
    try:
        models = [tuple(model) for model in args.model]
        scores = evaluate_no_reference(models, args.no_reference, args.out, args.show, overwrite=args.overwrite)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with open(os.path.join(args.out, "niqe.md"), encoding="utf-8") as summary:
        print(summary.read().rstrip())  # the table, with the network each checkpoint was scored as
    print()
    for label, change in scores.mean_changes().items():
        print(f"{label}: {change:+.3f} mean change from the rainy input, {NIQE_PROTOCOL}")
    labels = " | ".join(label for label, _, _ in args.model)
    print(f"side by side (rainy | {labels}): {os.path.join(args.out, 'comparison.png')}")
    return 0
