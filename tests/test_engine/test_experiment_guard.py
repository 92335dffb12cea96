"""An experiment folder is one run's: a lock while it trains, and a resume that never ignores a change.

Real ``erl-train`` processes on ``tiny_lmdb``; the "other run" is a sleeping process whose pid is in the
lock, as a training run's would be.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import run_python, tiny_options, write_options


def _train(folder: Path, opt_file: Path, *args: str) -> subprocess.CompletedProcess:
    return run_python(["-m", "erl_plugin.train", "-opt", str(opt_file), *args], folder)


def _lock(pid: int) -> str:
    return json.dumps({"owner": "erl_plugin", "pid": pid, "host": socket.gethostname(), "creates": []})


def test_a_second_run_of_one_experiment_is_refused_while_the_first_lives(
    tmp_path: Path, tiny_lmdb: dict[str, str]
) -> None:
    opt_file = write_options(tmp_path, tiny_options(tiny_lmdb, name="shared"))
    (tmp_path / "experiments").mkdir()
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "experiments/shared.lock").write_text(_lock(first.pid))
        second = _train(tmp_path, opt_file)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"error: another run (pid {first.pid} on {socket.gethostname()}) is writing experiments/shared" in (
        second.stderr
    )
    assert not (tmp_path / "experiments/shared").exists()  # nothing archived, nothing written

    stale = _train(tmp_path, opt_file)  # the holder is gone: its lock is taken over, and said so
    assert stale.returncode == 0, stale.stderr[-2000:]
    assert "was left by a run that no longer exists" in stale.stderr
    assert (tmp_path / "experiments/shared/models/net_g_latest.pth").is_file()
    assert not (tmp_path / "experiments/shared.lock").exists()


def test_a_resume_applies_what_it_can_and_refuses_what_the_state_would_override(
    tmp_path: Path, tiny_lmdb: dict[str, str]
) -> None:
    """Options the run reads as written (here: more iterations) apply on resume; options whose values the
    training state holds (the learning rate, in the optimizer's state) are refused, naming the key."""
    opt = tiny_options(tiny_lmdb, name="grow", total_iter=2)
    opt_file = write_options(tmp_path, opt)
    assert _train(tmp_path, opt_file).returncode == 0
    models = tmp_path / "experiments/grow/models"
    before = {p.name: p.read_bytes() for p in models.iterdir()}

    changed = _train(tmp_path, opt_file, "--auto_resume", "--set", "train.optim_g.lr=1e-5")
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "written by options with train.optim_g.lr: 0.001, but these give train.optim_g.lr: 1e-05" in changed.stderr
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before

    longer = _train(tmp_path, opt_file, "--auto_resume", "--set", "train.total_iter=4", "--set", "val.val_freq=4")
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "Resuming training from epoch: 0, iter: 2." in longer.stderr
    state = torch.load(tmp_path / "experiments/grow/training_states/4.state", weights_only=False)
    assert state["iter"] == 4


def test_a_run_without_a_seed_resumes(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    """BasicSR draws a seed when the options give none, another one at each start: not a change to refuse."""
    opt = tiny_options(tiny_lmdb, name="unseeded", total_iter=2)
    del opt["manual_seed"]
    opt_file = write_options(tmp_path, opt)
    assert _train(tmp_path, opt_file).returncode == 0
    resumed = _train(tmp_path, opt_file, "--auto_resume", "--set", "train.total_iter=4", "--set", "val.val_freq=4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming training from epoch: 0, iter: 2." in resumed.stderr
