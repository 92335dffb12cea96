"""Time ERL-Net against its MEMD backbone, and the DataLoader from image folders and from LMDB.

A benchmark, not a test: run it on an idle machine and compare the ratios, which one run measures
under the same conditions.

Example:
    python tools/benchmark.py --batch 4 --patch 128 --json results/benchmark.json
    python tools/benchmark.py --num-feat 32 --num-dense-layers 4 --growth-rate 32 --patch 320 --device cuda
    python tools/benchmark.py --parts loader --patch 320
"""

import argparse
import json
import os
import sys

import torch

from erl_plugin.benchmark import device_name, loader_benchmark, loader_markdown, markdown, run_benchmark


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-feat", type=int, default=16, help="MEMD width (the flagship uses 32)")
    parser.add_argument("--num-dense-layers", type=int, default=3, help="MEMD dense block depth (flagship: 4)")
    parser.add_argument("--growth-rate", type=int, default=16, help="MEMD growth rate (flagship: 32)")
    parser.add_argument("--batch", type=int, default=4, help="training batch size")
    parser.add_argument("--patch", type=int, default=128, help="square patch side, pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["model", "loader"],
        default=["model", "loader"],
        help="model: training steps and inference; loader: DataLoader patches/s (folder and LMDB, 0 and 2 workers)",
    )
    args = parser.parse_args()
    backbone = {
        "type": "MEMD",
        "num_feat": args.num_feat,
        "num_dense_layers": args.num_dense_layers,
        "growth_rate": args.growth_rate,
    }
    result = {}
    if "model" in args.parts:
        result["model"] = run_benchmark(backbone, args.batch, args.patch, repeats=args.repeats, device=args.device)
        print(markdown(result["model"]))
    if "loader" in args.parts:
        result["loader"] = loader_benchmark(patch=args.patch)
        print(loader_markdown(result["loader"], device_name(torch.device("cpu"))))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
