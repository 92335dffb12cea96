"""A warm interpreter for the suite's subprocesses: third-party libraries imported once, a fork per run.

Importing torch, torchvision (which pulls in torch._dynamo), OpenCV, SciPy and mmengine takes about
5 s of CPU on these machines, and the suite starts more than a hundred Python processes. This server
imports them once and never runs a tensor operation, so no thread pool exists when it forks. Each
request forks a child that takes the request's working directory, environment, ``sys.argv`` and
``sys.path`` and runs the script, ``-m`` module or ``-c`` code as ``__main__``, as ``python`` would.
BasicSR, mmengine's registries in use and erl_plugin are never imported here: every child imports
them itself, so compat patches, registries and py-lmdb's process state start clean, as in a fresh
interpreter. What a child spawns (torchrun's workers, the study's trainings) are fresh interpreters.

Protocol (one JSON object per line): the client writes ``{argv, cwd, env, stdout, stderr}``; the
server answers ``{"pid": N}`` once the child runs, then ``{"returncode": N}`` when it has exited
(negative: killed by that signal, as :mod:`subprocess` reports it).

:func:`needs_cold_start` names the requests a fork cannot serve: a changed variable that Python, the
start-up hook or the OpenMP runtime reads when the interpreter starts.
"""

import io
import json
import os
import sys

PRELOAD = (
    "torch",
    "torchvision",
    "torchvision.ops",
    "torchvision.transforms",
    "torchvision.models",
    "cv2",
    "numpy",
    "scipy.ndimage",
    "scipy.signal",
    "scipy.special",
    "skimage.metrics",
    "lmdb",
    "yaml",
    "tqdm",
    "PIL.Image",
    "addict",
    "yapf",
    "sympy",
)
"""Libraries whose import reads nothing a test varies (threads are set per child, below)."""

# Read when an interpreter (or libgomp, loaded with torch) starts: a child cannot take a new value.
_START_UP_PREFIXES = ("PYTHON", "OMP_", "GOMP_", "KMP_", "MKL_", "LD_", "MALLOC_", "TORCH", "CUDA")
_START_UP_NAMES = ("ERL_PLUGIN_NO_HOOK",)
_HANDLED = ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def needs_cold_start(args: list[str], env: dict[str, str], base: dict[str, str]) -> bool:
    """Whether ``python ARGS`` under ``env`` must run in a fresh interpreter rather than a fork."""
    if not args or (args[0].startswith("-") and args[0] not in ("-m", "-c")):
        return True
    changed = {key for key in set(env) | set(base) if env.get(key) != base.get(key)} - set(_HANDLED)
    return any(key.startswith(_START_UP_PREFIXES) or key in _START_UP_NAMES for key in changed)


def _run_child(request: dict) -> None:
    """In the forked child: become ``python ARGV`` in the request's directory and environment."""
    import runpy
    import traceback

    os.setpgid(0, 0)  # a group of its own, so that a timeout stops what it spawned too
    os.chdir(request["cwd"])
    base_path = [entry for entry in sys.path[1:] if entry not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # New stream objects on fds 0-2, as a starting interpreter makes them (the server's own
    # sys.stdout is its reply pipe, and its sys.stdin may hold requests read ahead).
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    # What torch starts with: MKL_NUM_THREADS where set (this build uses MKL), else OMP_NUM_THREADS.
    threads = os.environ.get("MKL_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    args = request["argv"]
    code = 0
    try:
        if args[0] == "-m":
            sys.argv = ["-m", *args[2:]]
            sys.path[:] = [os.getcwd(), *extra, *base_path]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            sys.path[:] = ["", *extra, *base_path]
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 (python -c)
        else:
            sys.argv = list(args)
            sys.path[:] = [os.path.dirname(os.path.abspath(args[0])), *extra, *base_path]
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 (what python prints for an uncaught exception)
        traceback.print_exc()
        code = 1
    try:
        import atexit
        import threading

        threading._shutdown()  # noqa: SLF001 (join non-daemon threads, as interpreter exit does)
        atexit._run_exitfuncs()  # noqa: SLF001
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve() -> None:
    """Import the libraries, then fork one child per request read from stdin."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the reply pipe
    print(json.dumps({"ready": True}), file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        print(json.dumps({"pid": pid}), file=replies, flush=True)
        _, status = os.waitpid(pid, 0)
        returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": returncode}), file=replies, flush=True)


if __name__ == "__main__":
    serve()
