"""Shared fixtures: a tiny paired LMDB, tiny training options, and subprocess helpers.

Training, torchrun and the start-up hook run in subprocesses, as users run them, so compat patches,
registries and py-lmdb's process state start clean in each. :func:`run_python` forks them from a warm
interpreter that has imported torch and the other third-party libraries but never BasicSR or the
plugin (``tests/warm_python.py``), which saves seconds per process; a run whose environment changes
what an interpreter reads at start-up gets a fresh one, and ``ERL_PLUGIN_TESTS_COLD=1`` gives every run
a fresh one. Tests use one torch thread per process (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``
unless set), so that the suite's parallel workers do not contend for the two cores.
"""

import atexit
import copy
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

# Before torch loads: its OpenMP and MKL runtimes read these once.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cv2  # noqa: E402
import lmdb  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from erl_plugin.data.lmdb_writer import write_paired_lmdb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


COLD_ENV = "ERL_PLUGIN_TESTS_COLD"


class _WarmPython:
    """The client of one ``tests/warm_python.py`` server per test process, started on first use."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None
        self.socket_path = ""
        self.lock = threading.Lock()

    def socket(self) -> str:
        """The server's socket (``tests/warm_python.py``), the server started if it is not running."""
        with self.lock:
            if self.server is None or self.server.poll() is not None:
                folder = tempfile.mkdtemp(prefix="warm_python_")
                self.socket_path = os.path.join(folder, "socket")
                self.server = subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "warm_python.py"), self.socket_path],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                atexit.register(self._stop, self.server, folder)
                if self.server.stdout.readline() != '{"ready": true}\n':
                    raise RuntimeError("tests/warm_python.py did not start; ERL_PLUGIN_TESTS_COLD=1 runs without it")
        return self.socket_path

    @staticmethod
    def _stop(server: subprocess.Popen, folder: str) -> None:
        server.kill()
        server.wait()
        server.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess | None:
        """``python ARGS`` as a fork of the server, or None where it needs a fresh interpreter.

        Raises ``subprocess.TimeoutExpired`` as ``subprocess.run`` does (the server then kills the run).
        """
        path = self.socket()
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr, open(os.devnull) as stdin:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(path)
                request = {"argv": args, "cwd": str(cwd), "env": env}
                streams = [handle.fileno() for handle in (stdin, stdout, stderr)]
                socket.send_fds(client, [json.dumps(request).encode() + b"\n"], streams)
                ready, _, _ = select.select([client], [], [], timeout)
                reply = json.loads(client.makefile("rb").readline()) if ready else None
            if reply is not None and reply.get("cold"):
                return None
            text = {}
            for name, handle in (("stdout", stdout), ("stderr", stderr)):
                handle.seek(0)
                text[name] = handle.read().decode(errors="replace")
        command = [sys.executable, *args]
        if reply is None:
            raise subprocess.TimeoutExpired(command, timeout, text["stdout"], text["stderr"])
        return subprocess.CompletedProcess(command, reply["returncode"], text["stdout"], text["stderr"])


_WARM = _WarmPython()


def warm_python_socket() -> str:
    """The socket of this test process's warm interpreter, for clients of its own (shell shims)."""
    return _WARM.socket()


def run_python(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300, cold: bool = False
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` with this interpreter; stdout and stderr are captured as text.

    ``cold``: in a fresh interpreter even where a fork would do (a test of what start-up does).
    """
    full_env = {**os.environ, **(env or {})}
    if not cold and os.environ.get(COLD_ENV) != "1":
        result = _WARM.run(args, cwd, full_env, timeout)
        if result is not None:
            return result
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scene(rng: np.random.Generator, size: int, width: int | None = None) -> np.ndarray:
    """A smooth colour image (``size`` x ``width``, square by default): blurred noise, so a network has
    structure to restore."""
    width = width or size
    noise = rng.random((max(2, size // 4), max(2, width // 4), 3)).astype(np.float32)
    return (cv2.resize(noise, (width, size), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def _rainy(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright diagonal streaks over ``clean``."""
    rainy = clean.copy()
    for _ in range(12):
        x, y = rng.integers(0, clean.shape[1]), rng.integers(0, clean.shape[0])
        cv2.line(rainy, (int(x), int(y)), (int(x) + 4, int(y) + 14), (235, 235, 235), 1)
    return rainy


def write_rain_pair(rainy_path: Path, clean_path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    """A clean scene of ``size`` (height, width) and its rainy version, as image files (folders made)."""
    clean = _scene(rng, *size)
    for path, image in ((clean_path, clean), (rainy_path, _rainy(clean, rng))):
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)


@pytest.fixture(scope="session")
def tiny_lmdb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train and test splits (6 and 2 pairs of 48x48 images) as BasicSR paired LMDBs."""
    root = tmp_path_factory.mktemp("tiny_rain")
    rng = np.random.default_rng(0)
    result = {}
    for split, count in (("train", 6), ("test", 2)):
        folder = root / split / "images"
        folder.mkdir(parents=True)
        pairs = []
        for index in range(count):
            clean = _scene(rng, 48)
            cv2.imwrite(str(folder / f"norain-{index}.png"), clean)
            cv2.imwrite(str(folder / f"rain-{index}.png"), _rainy(clean, rng))
            pairs.append((f"{index:04d}", str(folder / f"rain-{index}.png"), str(folder / f"norain-{index}.png")))
        lq, gt = write_paired_lmdb(pairs, root / split, progress=False)
        result[f"{split}_lq"], result[f"{split}_gt"] = str(lq), str(gt)
    return result


def tiny_options(data: dict[str, str], name: str = "tiny", total_iter: int = 2) -> dict[str, Any]:
    """Options for a seconds-long MEMD training on ``tiny_lmdb``, validating at the end."""
    return {
        "name": name,
        "model_type": "SRModel",
        "scale": 1,
        "num_gpu": 0,
        "manual_seed": 0,
        "datasets": {
            "train": {
                "name": "tiny_train",
                "type": "PairedImageDataset",
                "dataroot_gt": data["train_gt"],
                "dataroot_lq": data["train_lq"],
                "io_backend": {"type": "lmdb"},
                "gt_size": 32,
                "use_hflip": True,
                "use_rot": False,
                "num_worker_per_gpu": 0,
                "batch_size_per_gpu": 2,
                # BasicSR counts epochs with ceil() but drops the last partial batch: keep epochs long.
                "dataset_enlarge_ratio": 10,
            },
            "val": {
                "name": "tiny_test",
                "type": "PairedImageDataset",
                "dataroot_gt": data["test_gt"],
                "dataroot_lq": data["test_lq"],
                "io_backend": {"type": "lmdb"},
            },
        },
        "network_g": {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {
            "optim_g": {"type": "Adam", "lr": 1e-3},
            "scheduler": {"type": "MultiStepLR", "milestones": [1000], "gamma": 0.5},
            "total_iter": total_iter,
            "warmup_iter": -1,
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
        },
        "val": {
            "val_freq": total_iter,
            "save_img": False,
            "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 0, "test_y_channel": True}},
        },
        "logger": {"print_freq": 1, "save_checkpoint_freq": total_iter, "use_tb_logger": False},
    }


def plateau_options(data: dict[str, str], name: str, save_every: int) -> dict:
    """DerainModel on tiny_lmdb with a PlateauLR that never sees progress: /10 at 4 and 6, stop at 8."""
    opt = tiny_options(data, name=name, total_iter=40)
    opt["model_type"] = "DerainModel"
    opt["train"]["scheduler"] = {
        "type": "PlateauLR", "metric": "psnr", "patience": 2, "min_gain": 100, "max_reductions": 2, "stop": True,
    }  # fmt: skip
    opt["val"]["val_freq"] = 2
    opt["logger"].update(save_checkpoint_freq=save_every, print_freq=1)
    return opt


def read_lmdb_images(lmdb_path: str | Path) -> dict[str, np.ndarray]:
    """Every key of an image LMDB, decoded (opened and closed here, not through the shared cache)."""
    env = lmdb.open(str(lmdb_path), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return {
                key.decode(): cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
                for key, value in txn.cursor()
            }
    finally:
        env.close()


def write_options(folder: Path, opt: dict[str, Any], filename: str = "opt.yml") -> Path:
    """Write options as YAML into ``folder`` and return the file's path."""
    path = folder / filename
    path.write_text(yaml.safe_dump(copy.deepcopy(opt), sort_keys=False))
    return path
