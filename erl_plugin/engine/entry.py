"""What ``erl-train`` and ``erl-test`` share: arguments, option checks, the experiment's lock, and errors as
one line with an exit status; the loops themselves are :mod:`erl_plugin.engine.pipeline`'s.

The current directory is the root: ``experiments/``, ``results/`` and ``tb_logger/`` land there,
as they would in a BasicSR checkout.
"""

import argparse
import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from erl_plugin.data.images import ImageFileError
from erl_plugin.engine.options import (
    ITERS_SCALE_ENV,
    OptionsError,
    apply_overrides,
    import_custom_modules,
    load_options,
    scale_requested_iterations,
    validate_options,
)
from erl_plugin.engine.pipeline import RunRequest
from erl_plugin.engine.schema import read_environment
from erl_plugin.models.nonfinite import NonFiniteLossError
from erl_plugin.models.schedulers import PlateauReached
from erl_plugin.utils.outputs import DiskFullError, OutputError, output_lock
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


def run(
    pipeline: Callable[[dict[str, Any], RunRequest], None], argv: Sequence[str] | None, *, is_train: bool, prog: str
) -> int:
    """Check the options, then run ``pipeline`` on them with the current directory as root."""
    parser = build_parser(prog, f"{'Train' if is_train else 'Test'} with BasicSR and erl_plugin.")
    args = parser.parse_args(argv)
    try:
        check_launcher(args.launcher)
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
    request = RunRequest(
        launcher=args.launcher,
        auto_resume=args.auto_resume,
        debug=args.debug,
        root=os.getcwd(),
        options_file=args.opt,
        options_text=_options_text(args.opt, opt, args.overrides, scale),
        command=" ".join([prog, *(sys.argv[1:] if argv is None else argv)]),
    )
    with contextlib.ExitStack() as held:
        if _is_first_process():  # one lock per experiment, held by the rank that writes it
            try:
                held.enter_context(output_lock(experiment_folder(opt, is_train, args.debug)))
            except OutputError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
        try:
            pipeline(opt, request)
        except PlateauReached as stop:  # the schedule's stopping rule: a normal end
            print(f"{prog}: training ended: {stop}", file=sys.stderr)
            return 0
        except (ResumeError, NonFiniteLossError) as error:  # bad resume input (2), or training diverged (1)
            print(f"error: {error}", file=sys.stderr)
            return 2 if isinstance(error, ResumeError) else 1
        except ImageFileError as error:  # a file only decoding finds broken; checkpoints so far are kept
            print(f"error: {_last_line(error)}; {BAD_FILE_REMEDY}", file=sys.stderr)
            return 2
        except OutputError as error:  # a link or another's file where a checkpoint goes; nothing replaced
            print(f"error: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if isinstance(error, DiskFullError):  # names the file and the remedy already
                print(f"error: {error.strerror}", file=sys.stderr)
                return 1
            where = f" writing {error.filename}" if error.filename else ""
            print(
                f"error: {error.strerror}{where}; the checkpoints written so far are complete: free some space, "
                "then resume with --auto_resume",
                file=sys.stderr,
            )
            return 1
    return 0


def _options_text(path: str, opt: Mapping[str, Any], overrides: Sequence[str], scale: Any) -> str:
    """The options as the experiment folder keeps them: the file, or what ``--set`` and the scale made of it."""
    if not overrides and scale is None:
        return Path(path).read_text(encoding="utf-8")
    scaled = f" ({scale.source})" if scale is not None else ""
    header = f"# {path} with{''.join(f' --set {o}' for o in overrides)}{scaled}\n"
    return header + yaml.safe_dump(dict(opt), sort_keys=False)


def experiment_folder(opt: Mapping[str, Any], is_train: bool, debug: bool = False) -> str:
    """The folder BasicSR writes for these options: ``experiments/<name>`` (training) or ``results/<name>``."""
    name = opt["name"]
    if debug and not name.startswith("debug"):  # BasicSR's own renaming in debug mode
        name = f"debug_{name}"
    return os.path.join("experiments" if is_train else "results", name)


def _is_first_process() -> bool:
    """Whether this process is rank 0 of its job (or the only one)."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


LAUNCHER_ENV = {
    "pytorch": ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
    "slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST"),
}
"""The environment variables BasicSR's start of each launcher reads (torchrun and srun set them)."""

_LAUNCHER_REMEDY = {
    "pytorch": "start the command with torchrun (torchrun --nproc_per_node=N -m erl_plugin.train -opt FILE "
    "--launcher pytorch), or drop --launcher for one process",
    "slurm": "run it as a Slurm job step (srun ... --launcher slurm), or drop --launcher for one process",
}


def check_launcher(launcher: str) -> None:
    """``--launcher pytorch|slurm`` runs where that launcher started the process, with valid values.

    Raises:
        OptionsError: naming the variables that are missing or invalid (``RANK``, ``WORLD_SIZE``, ...), or,
            for slurm, the missing ``scontrol`` or CUDA device BasicSR's slurm start needs.
    """
    if launcher == "none":
        return
    missing = [name for name in LAUNCHER_ENV[launcher] if not os.environ.get(name, "").strip()]
    if missing:
        raise OptionsError(
            f"--launcher {launcher}: {', '.join(missing)} not set in the environment: this process was not started "
            f"by {'torchrun' if launcher == 'pytorch' else 'srun'}; {_LAUNCHER_REMEDY[launcher]}"
        )
    if launcher == "pytorch":
        rank, world_size = read_environment("RANK"), read_environment("WORLD_SIZE")
        read_environment("MASTER_PORT")
        read_environment("LOCAL_RANK")
        if rank >= world_size:
            raise OptionsError(f"--launcher pytorch: RANK={rank} must be below WORLD_SIZE={world_size}")
        return
    read_environment("SLURM_PROCID")
    read_environment("SLURM_NTASKS")
    if shutil.which("scontrol") is None:
        raise OptionsError("--launcher slurm: scontrol is not on PATH (BasicSR asks it for the master node)")
    if torch.cuda.device_count() == 0:
        raise OptionsError(
            "--launcher slurm: BasicSR's slurm start needs CUDA devices and this machine has none; on the CPU, "
            "start with torchrun and --launcher pytorch"
        )


def set_cpu_threads(requested: int | None) -> str:
    """Set torch's CPU thread count for this process and say how it was chosen.

    ``requested`` wins; else ``OMP_NUM_THREADS`` (torchrun sets 1 when it starts several processes
    on a node); else the cores shared by this node's processes (``LOCAL_WORLD_SIZE``), at least 1.

    Raises:
        OptionsError: ``requested`` is below 1, or ``OMP_NUM_THREADS`` or ``LOCAL_WORLD_SIZE`` is not a
            positive integer.
    """
    processes = read_environment("LOCAL_WORLD_SIZE") or 1
    omp_threads = read_environment("OMP_NUM_THREADS")
    if requested is not None:
        if requested < 1:
            raise OptionsError(f"--threads: {requested} must be 1 or more")
        threads, how = requested, "--threads"
    elif omp_threads:
        threads, how = torch.get_num_threads(), f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS'].strip()}"
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
