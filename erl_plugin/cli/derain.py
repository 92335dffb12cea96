"""Derain image files or folders with a trained network, keeping each file's name and format.

Large images go through in overlapping tiles (--tile, --overlap) unless --no-tile. Folders are read
non-recursively (png, jpg, jpeg, bmp, tif, tiff, webp). Unreadable files are skipped and listed at the
end; the exit status is then 1 (0 when every file was derained, 2 on an error before any work).

Without --checkpoint, the network's weights come from the options' ``path.pretrain_network_g`` (with
``path.param_key_g``), as BasicSR's test.py takes them.

--score also scores every input and its output with NIQE, a no-reference metric (no clean image needed;
lower is better; not comparable to PSNR/SSIM): niqe.csv (per image) and niqe.md (the means) go into
--output and one summary line naming the metric to stderr. Images smaller than NIQE's two 96x96 blocks
are derained and listed as not scored.

Examples:
    erl-derain --opt options/erl_demo.yml \
        --checkpoint experiments/erl_demo/models/net_g_latest.pth \
        --input photos/ --output results/photos_derained --compare --score
    erl-derain --opt options/test/erl_demo.yml --input photos/ --output results/photos_derained
"""

import argparse
import os
import sys

import torch

from erl_plugin.cli import add_network_arguments
from erl_plugin.evaluation.evaluate import checkpoint_from_options, load_network
from erl_plugin.evaluation.inference import PRECISIONS, derain_paths


def main(argv: list[str] | None = None) -> int:
    """Derain the inputs; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_network_arguments(parser)
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders")
    parser.add_argument("--output", required=True, help="output folder (not the folder of an input)")
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels (default: 512)")
    parser.add_argument("--overlap", type=int, default=32, help="overlap between tiles in pixels (default: 32)")
    parser.add_argument("--no-tile", action="store_true", help="run each image whole")
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="autocast precision: bf16 on CUDA or the CPU, fp16 on CUDA (elsewhere it warns and runs fp32)",
    )
    parser.add_argument("--channels-last", action="store_true", help="run the network in channels_last memory order")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the network (warns and runs eagerly where unavailable)"
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda when available, else cpu",
    )
    parser.add_argument("--compare", action="store_true", help="also write <stem>_compare.png (rainy | derained)")
    parser.add_argument(
        "--score",
        action="store_true",
        help="also write niqe.csv and niqe.md: NIQE (no-reference, lower is better) of every input and output",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace images an earlier run wrote in --output (never yours)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    try:
        checkpoint, param_key = checkpoint_from_options(args.opt, args.checkpoint)
        network = load_network(args.opt, checkpoint, param_key)  # a bad checkpoint raises ValueError naming it
        print(f"de-raining with {network.scored}, from {checkpoint}", flush=True)
        report = derain_paths(
            network.net,
            args.input,
            args.output,
            tile=None if args.no_tile else args.tile,
            overlap=args.overlap,
            precision=args.precision,
            device=args.device,
            channels_last=args.channels_last,
            compile=args.compile,
            side_by_side=args.compare,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            score=args.score,
        )
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.niqe is not None:
        for _, reason in report.niqe.skipped:
            print(f"note: {reason}", file=sys.stderr)
        print(f"{report.niqe.summary()}; per image in {os.path.join(args.output, 'niqe.csv')}", file=sys.stderr)
    return 1 if report.skipped else 0
