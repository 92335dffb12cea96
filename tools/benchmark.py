"""Time ERL-Net and MEMD: training per stage in fp32 and AMP, inference, overhead, and the DataLoader.

A benchmark, not a test: run it on an idle machine. Ratios compare runs made in one process under
the same conditions. Writes Markdown to stdout (and --markdown) and JSON to --json.

Example (the defaults are the GPU settings: flagship MEMD, 320x320 crops, batch 16):
    python tools/benchmark.py --device cuda --json results/benchmark_gpu.json --markdown results/benchmark_gpu.md
    python tools/benchmark.py --device cpu --num-feat 16 --num-dense-layers 3 --growth-rate 16 --batch 4 \\
        --patch 128 --infer-batches 1 4 --workers 0 2 --repeats 3 --json results/benchmark_cpu.json
    python tools/benchmark.py --parts loader --patch 320 --batch 16 --workers 0 2 8
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # erl_dev: the checkout's development tools

import torch

from erl_dev.benchmark import fast_setting, markdown, run_benchmark
from erl_plugin.utils.outputs import write_text
from erl_plugin.utils.speed import check_compile, check_precision


def size(text: str) -> tuple[int, int]:
    """``WxH`` as ``(width, height)``."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 481x321") from None
    return width, height


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-feat", type=int, default=32, help="MEMD width (default: 32, the flagship)")
    parser.add_argument("--num-dense-layers", type=int, default=4, help="MEMD dense block depth (default: 4)")
    parser.add_argument("--growth-rate", type=int, default=32, help="MEMD growth rate (default: 32)")
    parser.add_argument("--batch", type=int, default=16, help="training (and loader) batch size (default: 16)")
    parser.add_argument("--patch", type=int, default=320, help="square training crop side (default: 320)")
    parser.add_argument("--sizes", type=size, nargs="+", default=[(320, 320), (481, 321)], help="inference sizes WxH")
    parser.add_argument("--infer-batches", type=int, nargs="+", default=[1, 16], help="inference batch sizes")
    parser.add_argument("--amp", default="bf16", help="the fast setting's precision: bf16, fp16 (CUDA) or none")
    parser.add_argument("--no-channels-last", action="store_true", help="the fast setting without channels_last")
    parser.add_argument("--compile", action="store_true", help="the fast setting also torch.compiles (inductor)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8], help="DataLoader worker counts")
    parser.add_argument("--loader-images", type=int, default=24, help="image pairs the loader reads")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before the timed ones")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's); 1 is steadier on a shared machine"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["train", "overhead", "inference", "loader"],
        default=["train", "overhead", "inference", "loader"],
        help="what to measure (default: everything)",
    )
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument("--markdown", help="also write the Markdown tables here")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json / --markdown files")
    args = parser.parse_args()
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path and os.path.lexists(path) and not args.overwrite:
            print(f"error: {flag} {path} already exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
    try:
        check_precision(args.amp, "--amp")
    except ValueError as error:
        parser.error(str(error))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"error: --device {args.device}, but CUDA is not available on this machine; use --device cpu",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backbone = {
        "type": "MEMD",
        "num_feat": args.num_feat,
        "num_dense_layers": args.num_dense_layers,
        "growth_rate": args.growth_rate,
    }
    fast = fast_setting(args.amp, not args.no_channels_last, check_compile(args.compile))
    result = run_benchmark(
        backbone,
        args.batch,
        args.patch,
        fast=fast,
        sizes=args.sizes,
        infer_batches=args.infer_batches,
        parts=args.parts,
        loader_workers=args.workers,
        loader_images=args.loader_images,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    result["command"] = " ".join(["python", "tools/benchmark.py", *sys.argv[1:]])
    table = f"Command: `{result['command']}`\n\n{markdown(result)}"
    print(table)
    for path, text in ((args.json, json.dumps(result, indent=2)), (args.markdown, table)):
        if path:
            write_text(path, text + "\n", replace=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
