"""Can ERL-Net's feature loss help? The entanglement headroom of a student and its teacher.

Decodes, with the student's frozen decoder, the student's embedding of each rainy image, the teacher's
embedding of the clean image (the feature loss's target) and their midpoint, and scores the teacher clean to
clean with and without its features (PSNR, basicsr protocol). ERLModel logs the same line when the feature
loss starts; see erl_plugin/models/headroom.py.

Example:
    erl-headroom -opt options/erl_demo.yml --network-g experiments/erl_demo/models/memd_stage1.pth \
        --teacher experiments/erl_demo/models/net_t_teacher.pth
"""

import argparse
import json
import os
import sys

from erl_plugin.engine.options import OptionsError
from erl_plugin.evaluation.evaluate import checkpoint_headroom
from erl_plugin.models.headroom import MIN_MARGIN_DB
from erl_plugin.utils.outputs import OutputError, check_not_input, write_text


def main(argv: list[str] | None = None) -> int:
    """Measure and print the headroom; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-opt", required=True, help="ERL-Net options (network_g: ERLNet; train.teacher_mode)")
    parser.add_argument("--network-g", required=True, help="the student: an ERLNet or a plain backbone checkpoint")
    parser.add_argument("--teacher", required=True, help="the teacher's checkpoint (net_t_*.pth)")
    parser.add_argument("--data", help="test folder, any layout (default: the options' first validation set)")
    parser.add_argument(
        "--min-margin", type=float, default=MIN_MARGIN_DB, help="the target's gain over the student that counts (dB)"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    try:
        if args.json:
            inputs = [path for path in (args.opt, args.network_g, args.teacher, args.data) if path]
            check_not_input(args.json, inputs, "--json")
            if os.path.lexists(args.json) and not args.overwrite:
                raise OutputError(f"--json {args.json} already exists; pass --overwrite to replace it")
        headroom = checkpoint_headroom(args.opt, args.network_g, args.teacher, args.data)
    except (OptionsError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(headroom.report(args.min_margin))
    if args.json:
        write_text(args.json, json.dumps(headroom.as_dict(), indent=1) + "\n", replace=args.overwrite)
    return 0
