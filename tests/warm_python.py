"""A warm interpreter for the suite's subprocesses: third-party libraries imported once, a fork per run.

Importing torch, torchvision (which pulls in torch._dynamo), OpenCV, SciPy and mmengine takes about
5 s of CPU on these machines, and the suite starts more than a hundred Python processes. This server
imports them once and never runs a tensor operation, so no thread pool exists when it forks. Each
request forks a child that takes the request's working directory, environment, standard streams,
``sys.argv`` and ``sys.path`` and runs the script, ``-m`` module or ``-c`` code as ``__main__``, as
``python`` would. BasicSR, mmengine's registries in use and erl_plugin are never imported here: every
child imports them itself, so compat patches, registries and py-lmdb's process state start clean, as in
a fresh interpreter. What a child spawns (torchrun's workers, the study's trainings) are fresh
interpreters.

Protocol, on a Unix socket (``python warm_python.py SOCKET``): a client connects and sends its request
``{argv, cwd, env}`` as one JSON line, with the child's stdin, stdout and stderr as file descriptors;
it gets ``{"returncode": N}`` when the child has exited (negative: killed by that signal, as
:mod:`subprocess` reports it), or ``{"cold": true}`` when :func:`needs_cold_start` says a fork cannot
serve the request. Children run side by side; one whose client goes away (a timeout, a shell killed) is
killed with what it spawned. The clients are conftest's ``run_python`` and, for shells, :data:`SHIM`.
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


def _run_child(request: dict, streams: list[int]) -> None:
    """In the forked child: become ``python ARGV`` in the request's directory, environment and streams."""
    import runpy

    os.setpgid(0, 0)  # a group of its own, so that a timeout stops what it spawned too
    os.chdir(request["cwd"])
    base_path = [entry for entry in sys.path[1:] if entry not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, source in enumerate(streams):
        os.dup2(source, fd)
        os.close(source)
    # New stream objects on fds 0-2, as a starting interpreter makes them (the server's own may hold
    # buffered output).
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
    except BaseException:  # noqa: BLE001 (what python does with an uncaught exception: its excepthook)
        sys.excepthook(*sys.exc_info())
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


def _exit_status(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve(path: str) -> None:
    """Import the libraries, then serve requests on the Unix socket ``path`` until killed."""
    import importlib
    import select
    import signal
    import socket

    base = dict(os.environ)  # before the imports, some of which set variables of their own
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print(json.dumps({"ready": True}), flush=True)
    running: dict[socket.socket, int] = {}
    while True:
        readable, _, _ = select.select([listener, *running], [], [], 0.05)
        for connection in readable:
            if connection is listener:
                client, _ = listener.accept()
                data, streams, _, _ = socket.recv_fds(client, 1 << 20, 3)
                while not data.endswith(b"\n"):
                    data += client.recv(1 << 20)
                request = json.loads(data)
                if needs_cold_start(request["argv"], request["env"], base):
                    client.sendall(b'{"cold": true}\n')
                    client.close()
                else:
                    pid = os.fork()
                    if pid == 0:
                        for other in (listener, client, *running):
                            other.close()
                        _run_child(request, streams)
                    running[client] = pid
                for fd in streams:
                    os.close(fd)
            elif not connection.recv(1):  # the client has gone
                try:
                    os.killpg(running[connection], signal.SIGKILL)
                except ProcessLookupError:  # it has just exited
                    pass
        for client, pid in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                try:
                    client.sendall(json.dumps({"returncode": _exit_status(status)}).encode() + b"\n")
                except OSError:  # the client has gone
                    pass
                client.close()
                del running[client]


SHIM = """#!{python} -IS
# `{name}` for a shell: the command runs as a fork of the warm interpreter at {socket}
# (tests/warm_python.py), or in the real interpreter where a fork cannot serve it.
import json, os, socket, sys

argv = {prefix!r} + sys.argv[1:]
try:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect({socket!r})
    request = {{"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}}
    socket.send_fds(client, [json.dumps(request).encode() + b"\\n"], [0, 1, 2])
    reply = json.loads(client.makefile("rb").readline())
except (OSError, ValueError):
    reply = {{"cold": True}}
if reply.get("cold"):
    os.execv({python!r}, [{python!r}, *argv])
code = reply["returncode"]
sys.exit(code if code >= 0 else 128 - code)
"""
"""The client a shell runs as ``python`` (or ``erl-train``: ``prefix`` is then its console script)."""


def write_shim(path: str, name: str, socket_path: str, prefix: list[str]) -> None:
    """Write an executable :data:`SHIM` at ``path`` that runs ``python PREFIX ARGS...`` warm."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(SHIM.format(python=sys.executable, name=name, socket=socket_path, prefix=prefix))
    os.chmod(path, 0o755)


if __name__ == "__main__":
    serve(sys.argv[1])
