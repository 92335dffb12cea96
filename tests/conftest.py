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
import signal
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
from warm_python import needs_cold_start  # noqa: E402

from erl_plugin.data.lmdb_writer import write_paired_lmdb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


COLD_ENV = "ERL_PLUGIN_TESTS_COLD"


class _WarmPython:
    """The client of one ``tests/warm_python.py`` server per test process, started on first use."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None
        self.base_env: dict[str, str] = {}
        self.lock = threading.Lock()

    def _start(self) -> bool:
        self.base_env = dict(os.environ)
        self.server = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "warm_python.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        atexit.register(self._stop, self.server)
        if self.server.stdout.readline() != '{"ready": true}\n':
            self.server.kill()
            self.server = None
        return self.server is not None

    @staticmethod
    def _stop(server: subprocess.Popen) -> None:
        server.stdin.close()  # the server's loop ends with its input
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """``python ARGS`` as a fork of the server; raises ``subprocess.TimeoutExpired`` as ``subprocess.run``."""
        with self.lock, tempfile.TemporaryDirectory(prefix="warm_python_") as scratch:
            if self.server is None or self.server.poll() is not None:
                self._start()
            outputs = {"stdout": os.path.join(scratch, "stdout"), "stderr": os.path.join(scratch, "stderr")}
            request = {"argv": args, "cwd": str(cwd), "env": env, **outputs}
            self.server.stdin.write(json.dumps(request) + "\n")
            pid = json.loads(self.server.stdout.readline())["pid"]
            ready, _, _ = select.select([self.server.stdout], [], [], timeout)
            if not ready:
                os.killpg(pid, signal.SIGKILL)
            returncode = json.loads(self.server.stdout.readline())["returncode"]
            text = {name: Path(path).read_text(errors="replace") for name, path in outputs.items()}
        command = [sys.executable, *args]
        if not ready:
            raise subprocess.TimeoutExpired(command, timeout, text["stdout"], text["stderr"])
        return subprocess.CompletedProcess(command, returncode, text["stdout"], text["stderr"])


_WARM = _WarmPython()


def run_python(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300, cold: bool = False
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` with this interpreter; stdout and stderr are captured as text.

    ``cold``: in a fresh interpreter even where a fork would do (a test of what start-up does).
    """
    full_env = {**os.environ, **(env or {})}
    warm = not cold and os.environ.get(COLD_ENV) != "1"
    if warm and not needs_cold_start(args, full_env, _WARM.base_env or dict(os.environ)):
        return _WARM.run(args, cwd, full_env, timeout)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour image: blurred noise, so a network has structure to restore."""
    noise = rng.random((size // 4, size // 4, 3)).astype(np.float32)
    return (cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def _rainy(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright diagonal streaks over ``clean``."""
    rainy = clean.copy()
    for _ in range(12):
        x, y = rng.integers(0, clean.shape[1]), rng.integers(0, clean.shape[0])
        cv2.line(rainy, (int(x), int(y)), (int(x) + 4, int(y) + 14), (235, 235, 235), 1)
    return rainy


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
