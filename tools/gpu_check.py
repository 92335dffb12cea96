"""Check the CUDA paths in one run: correctness against the CPU, torchrun with nccl, speed, fidelity.

Prints a table at the end and writes it to OUT/gpu_check.md and OUT/gpu_check.json (after every part,
so a run stopped early keeps what it measured). Exit status 0 when every correctness and distributed
check that ran passed, 1 otherwise, 2 when asked for the GPU run on a machine without CUDA.
See :mod:`erl_dev.gpu_check` for what each part does.

Example:
    python tools/gpu_check.py --out results/gpu_check                 # on a CUDA machine, about 8 minutes
    python tools/gpu_check.py --dry-run --out /tmp/gpu_check          # every part on the CPU, tiny sizes
    tools/gpu_check.sh                                                # a bare GPU machine: wheels from .whl/
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # erl_dev: the checkout's development tools

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (gpu_check.md, gpu_check.json, distributed/)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="total time, split over the parts (default 480)")
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU with tiny networks and sizes")
    args = parser.parse_args()
    if args.budget_s <= 0:
        parser.error(f"--budget-s: {args.budget_s:g} must be positive")
    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"error: no CUDA device (torch {torch.__version__}); run on a GPU machine, or --dry-run for the CPU",
            file=sys.stderr,
        )
        return 2
    from erl_dev.gpu_check import markdown, run_gpu_check

    result = run_gpu_check(args.out, dry_run=args.dry_run, budget_s=args.budget_s)
    print(markdown(result), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
