"""Export a trained network to TorchScript (<name>.pt) and ONNX (<name>.onnx), checked against PyTorch.

The exported model takes an (N, C, H, W) float32 RGB batch in [0, 1] of any size and returns the derained
batch (not clamped), as erl-derain --no-tile computes it; the ONNX graph has batch, height and width dynamic.
Every export is checked: the exported models run on random images of sizes the trace never saw (TorchScript
with torch.jit.load, ONNX with onnxruntime on the CPU) and must match PyTorch within a tolerance (the opset,
the tolerance and the check's table are printed); otherwise nothing is written and the exit status is 1
(2 on an error before any work).

Without --checkpoint, the network's weights come from the options' ``path.pretrain_network_g`` (with
``path.param_key_g``), as BasicSR's test.py takes them.

Examples:
    erl-export --opt options/erl_demo.yml \
        --checkpoint experiments/erl_demo/models/net_g_latest.pth --out exported/erl_demo
    erl-export --opt options/test/erl_demo.yml --out exported/erl_demo --format onnx --name erl_demo
"""

import argparse
import sys

from erl_plugin.cli import add_network_arguments
from erl_plugin.evaluation.evaluate import checkpoint_from_options
from erl_plugin.evaluation.export import (
    FORMATS,
    OPSET,
    ExportDependencyError,
    ExportRefused,
    export_network,
)


def main(argv: list[str] | None = None) -> int:
    """Export and check the network; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_network_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for <name>.pt and <name>.onnx")
    parser.add_argument("--name", help="file name without suffix (default: the checkpoint's, e.g. net_g_latest)")
    parser.add_argument("--format", choices=[*FORMATS, "both"], default="both", help="what to export (default: both)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files an earlier export wrote in --out (never yours)"
    )
    args = parser.parse_args(argv)
    formats = FORMATS if args.format == "both" else (args.format,)
    try:
        checkpoint, param_key = checkpoint_from_options(args.opt, args.checkpoint)
        print(f"exporting network_g of {args.opt}, from {checkpoint}", flush=True)
        if "onnx" in formats:
            print(f"ONNX opset {OPSET} (torch.onnx legacy TorchScript-based exporter)", flush=True)
        report = export_network(
            args.opt,
            checkpoint,
            args.out,
            name=args.name,
            formats=formats,
            param_key=param_key,
            overwrite=args.overwrite,
        )
    except ExportRefused as error:
        if error.report is not None and error.report.rows:
            print(error.report.table())
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, ExportDependencyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {report.network}")
    print(report.table())
    for path in report.files:
        print(f"wrote {path}")
    return 0
