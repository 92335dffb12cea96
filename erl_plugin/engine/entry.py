"""What ``erl-train`` and ``erl-test`` share: arguments, option checks, and the hand-over to BasicSR.

The current directory is the root: ``experiments/``, ``results/`` and ``tb_logger/`` land there,
as they would in a BasicSR checkout.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import torch
import yaml

from erl_plugin.data.lmdb_writer import ImageFileError
from erl_plugin.engine.options import (
    ITERS_SCALE_ENV,
    OptionsError,
    apply_overrides,
    import_custom_modules,
    load_options,
    scale_requested_iterations,
    validate_options,
)
from erl_plugin.models.nonfinite import NonFiniteLossError
from erl_plugin.models.schedulers import PlateauReached
from erl_plugin.utils.resume import ResumeError


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """BasicSR's own arguments, plus ``--set`` for overrides that run no code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-opt", required=True, help="path to the options YAML file")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none", help="job launcher")
    parser.add_argument("--auto_resume", action="store_true", help="resume from the latest training state")
    parser.add_argument("--debug", action="store_true", help="BasicSR debug mode (frequent logs and saves)")
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an option, e.g. --set train.total_iter=1000 (repeatable; YAML values; "
        "prefix the key with + to add a new one)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads per process (default: OMP_NUM_THREADS if set, else the cores divided among "
        "this node's processes)",
    )
    parser.add_argument(
        "--iters-scale",
        type=float,
        metavar="F",
        help="shorten (or lengthen) a run: multiply total_iter, every stage's iterations, the milestones and "
        f"periods, val_freq, save_checkpoint_freq and print_freq by F (after --set; default: ${ITERS_SCALE_ENV})",
    )
    return parser


def run(pipeline: Callable[[str], None], argv: Sequence[str] | None, *, is_train: bool, prog: str) -> int:
    """Check the options, then run a BasicSR pipeline on them with the current directory as root."""
    parser = build_parser(prog, f"{'Train' if is_train else 'Test'} with BasicSR and erl_plugin.")
    args = parser.parse_args(argv)
    try:
        opt = apply_overrides(load_options(args.opt), args.overrides, args.opt)
        opt, scale = scale_requested_iterations(opt, args.iters_scale)
        import_custom_modules(opt, args.opt)
        validate_options(opt, args.opt, is_train=is_train)
        print(f"{prog}: {set_cpu_threads(args.threads)}", file=sys.stderr, flush=True)
        if scale is not None:
            print(f"{prog}: {scale}", file=sys.stderr, flush=True)
    except OptionsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    flags = ["--launcher", args.launcher] + ["--auto_resume"] * args.auto_resume + ["--debug"] * args.debug
    with tempfile.TemporaryDirectory(prefix="erl_opt_") as tmp:
        opt_path = args.opt
        if args.overrides or scale is not None:
            # BasicSR reads the options from a file and copies it into the experiment folder, so
            # the file it gets is the resolved one.
            opt_path = os.path.join(tmp, os.path.basename(args.opt))
            with open(opt_path, "w", encoding="utf-8") as handle:
                scaled = f" ({scale.source})" if scale is not None else ""
                handle.write(f"# {args.opt} with{''.join(f' --set {o}' for o in args.overrides)}{scaled}\n")
                yaml.safe_dump(opt, handle, sort_keys=False)
        sys.argv = [prog, "-opt", opt_path, *flags]
        try:
            pipeline(os.getcwd())
        except PlateauReached as stop:  # the schedule's stopping rule: a normal end
            print(f"{prog}: training ended: {stop}", file=sys.stderr)
            return 0
        except (ResumeError, NonFiniteLossError) as error:  # bad resume input (2), or training diverged (1)
            print(f"error: {error}", file=sys.stderr)
            return 2 if isinstance(error, ResumeError) else 1
        except ImageFileError as error:  # a file only decoding finds broken; checkpoints so far are kept
            print(f"error: {_last_line(error)}; {BAD_FILE_REMEDY}", file=sys.stderr)
            return 2
    return 0


def set_cpu_threads(requested: int | None) -> str:
    """Set torch's CPU thread count for this process and say how it was chosen.

    ``requested`` wins; else ``OMP_NUM_THREADS`` (torchrun sets 1 when it starts several processes
    on a node); else the cores shared by this node's processes (``LOCAL_WORLD_SIZE``), at least 1.

    Raises:
        OptionsError: ``requested`` is below 1.
    """
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if requested is not None:
        if requested < 1:
            raise OptionsError(f"--threads: {requested} must be 1 or more")
        threads, how = requested, "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        threads, how = torch.get_num_threads(), f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    else:
        threads = max(1, (os.cpu_count() or 1) // processes)
        how = f"{os.cpu_count()} cores / {processes} process(es) on this node"
    torch.set_num_threads(threads)
    return f"torch CPU threads: {threads} per process ({how}; --threads N to choose)"


BAD_FILE_REMEDY = (
    "remove or replace the file (for an LMDB: re-create it with tools/create_lmdb.py --skip-bad), then "
    "resume with --auto_resume"
)


def _last_line(error: Exception) -> str:
    """The message itself: a DataLoader worker's re-raised error carries the worker's traceback first."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else repr(error)
    return last.split(f"{type(error).__name__}: ", 1)[-1]
