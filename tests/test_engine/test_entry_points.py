"""``erl-train`` / ``python -m erl_plugin.train``, ``erl-test``, option checks and torchrun on CPU."""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_python, tiny_options, write_options

import erl_plugin  # noqa: F401  (registers the datasets)
from erl_plugin.engine.entry import set_cpu_threads
from erl_plugin.engine.options import OptionsError, apply_overrides, validate_options
from erl_plugin.train import main as run_erl_train

ERL_TRAIN = shutil.which("erl-train", path=str(Path(sys.executable).parent))
ERL_TEST = shutil.which("erl-test", path=str(Path(sys.executable).parent))


def test_every_tool_is_an_installed_command(tmp_path: Path) -> None:
    """The console scripts of setup.py exist after installation, and each is the tool of the same name."""
    declared = re.findall(r'"(erl-[a-z-]+) = erl_plugin\.([a-z_.]+):main"', (REPO / "setup.py").read_text())
    assert {name for name, _ in declared} >= {
        "erl-train",
        "erl-test",
        "erl-derain",
        "erl-evaluate",
        "erl-analyze",
        "erl-leaderboard",
        "erl-create-lmdb",
        "erl-synthesize-rain",
        "erl-headroom",
        "erl-export",
    }
    for name, module in declared:
        assert shutil.which(name, path=str(Path(sys.executable).parent)), f"{name} is not installed"
        assert (REPO / "erl_plugin" / f"{module.replace('.', '/')}.py").is_file(), module
    derain = subprocess.run(
        [shutil.which("erl-derain", path=str(Path(sys.executable).parent)), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert derain.returncode == 0 and derain.stdout.startswith("usage: erl-derain"), derain.stderr


def test_overrides_parse_yaml_values_and_leave_the_input_alone() -> None:
    opt = {"train": {"total_iter": 10, "optim_g": {"lr": 1e-3}}, "path": {}}
    result = apply_overrides(
        opt, ["train.total_iter=20", "train.optim_g.lr=4e-4", "+path.pretrain_network_g=a.pth"], "x.yml"
    )
    assert result["train"] == {"total_iter": 20, "optim_g": {"lr": 4e-4}}
    assert result["path"] == {"pretrain_network_g": "a.pth"}
    assert opt["train"]["total_iter"] == 10 and opt["path"] == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.total_itr=5", "train.total_itr is not in x.yml (keys there: total_iter)"),
        ("train", "expected key.sub=value"),
        ("train.total_iter.x=1", "train.total_iter in x.yml is not a mapping"),
        ("train.total_iter=[1", "not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(OptionsError) as error:
        apply_overrides({"train": {"total_iter": 10}}, [override], "x.yml")
    assert message in str(error.value)


@pytest.mark.slow
def test_train_console_script_then_test(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt_file = write_options(tmp_path, tiny_options(tiny_lmdb, name="via_script"))
    result = run_python([ERL_TRAIN, "-opt", str(opt_file), "--set", "train.optim_g.lr=5e-4"], tmp_path)
    assert result.returncode == 0, result.stderr
    experiment = tmp_path / "experiments/via_script"
    state = torch.load(experiment / "models/net_g_latest.pth", weights_only=True)
    assert "stem.0.weight" in state["params"]
    assert "# psnr:" in result.stderr
    assert "erl-train: torch CPU threads: 1 per process (OMP_NUM_THREADS=1;" in result.stderr  # conftest's setting
    assert "torch CPU threads: 1 per process" in next(experiment.glob("train_via_script_*.log")).read_text()
    recorded = yaml.safe_load((experiment / "opt.yml").read_text())
    assert recorded["train"]["optim_g"]["lr"] == 5e-4

    test_opt = tiny_options(tiny_lmdb, name="via_script_test")
    test_opt["path"]["pretrain_network_g"] = str(experiment / "models/net_g_latest.pth")
    test_opt["datasets"] = {"test_1": test_opt["datasets"]["val"]}
    test_opt["val"].update(save_img=True, suffix=None)
    del test_opt["train"]
    tested = run_python([ERL_TEST, "-opt", str(write_options(tmp_path, test_opt, "test.yml"))], tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "# psnr:" in tested.stderr
    saved = sorted((tmp_path / "results/via_script_test/visualization/tiny_test").glob("*.png"))
    assert [p.name for p in saved] == ["0000_via_script_test.png", "0001_via_script_test.png"]


@pytest.mark.slow
def test_train_as_module_with_cwd_as_root_and_one_knob_to_shorten(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt_file = write_options(tmp_path, tiny_options(tiny_lmdb, name="via_module", total_iter=8))
    result = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file), "--iters-scale", "0.25"], tmp_path)
    assert result.returncode == 0, result.stderr
    models = tmp_path / "experiments/via_module/models"
    assert (models / "net_g_latest.pth").is_file() and (models / "net_g_2.pth").is_file()  # 8 x 0.25 iterations
    assert (
        "End of training" in result.stderr
        and "iter:       2," in result.stderr
        and "iter:       3," not in result.stderr
    )
    kept = next((tmp_path / "experiments/via_module").glob("*.yml")).read_text()
    assert f"# {opt_file} with (--iters-scale 0.25)" in kept and "total_iter: 2" in kept


def _erl_train_here(folder: Path, *argv: str) -> tuple[int, str]:
    """``erl-train ARGV`` called in this process with ``folder`` as the root: its exit status and stderr."""
    stderr, cwd = io.StringIO(), os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(stderr):
            status = run_erl_train(list(argv))
    finally:
        os.chdir(cwd)
    return status, stderr.getvalue()


def _expect_options_error(tmp_path: Path, opt: dict, *needles: str) -> None:
    """erl-train refuses ``opt`` with one line and exit status 2, before anything exists (called in this
    process: a refusal returns before the pipeline starts, and an exception would fail the test)."""
    opt_file = write_options(tmp_path, opt)
    status, stderr = _erl_train_here(tmp_path, "-opt", str(opt_file))
    assert status == 2
    assert stderr.startswith("error: "), stderr
    for needle in (str(opt_file), *needles):
        assert needle in stderr
    assert not (tmp_path / "experiments").exists()


def test_unknown_network_type(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb)
    opt["network_g"]["type"] = "MEDM"
    _expect_options_error(tmp_path, opt, "network_g.type", "'MEDM' is not a registered network", "MEMD")


def test_missing_dataset_path(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb)
    opt["datasets"]["train"]["dataroot_lq"] = "datasets/nowhere/lq.lmdb"
    _expect_options_error(tmp_path, opt, "datasets.train.dataroot_lq", "'datasets/nowhere/lq.lmdb' does not exist")


def test_missing_options_file(tmp_path: Path) -> None:
    status, stderr = _erl_train_here(tmp_path, "-opt", "missing.yml")
    assert status == 2 and "error: missing.yml: options file not found" in stderr


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt_file = write_options(tmp_path, tiny_options(tiny_lmdb, name="ddp"))
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = run_python([*args, "-m", "erl_plugin.train", "-opt", str(opt_file), "--launcher", "pytorch"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "World size (gpu number): 2" in result.stderr
    assert "End of training" in result.stderr
    assert (tmp_path / "experiments/ddp/models/net_g_latest.pth").is_file()


def test_unknown_protocol_in_val_metrics(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb)
    opt["val"]["metrics"] = {"psnr_ieee": {"type": "protocol_psnr", "protocol": "ieee"}}
    _expect_options_error(tmp_path, opt, "val.metrics.psnr_ieee.protocol", "allowed: basicsr, paper, matlab")


def test_missing_val_save_img(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb)
    del opt["val"]["save_img"]  # BasicSR would train, then fail with KeyError at the first validation
    _expect_options_error(tmp_path, opt, "val.save_img is missing")


def _break(opt: dict, change: str) -> None:
    """Apply one careless edit to tiny options."""
    if change == "total_iter 0":
        opt["train"]["total_iter"] = 0
    elif change == "total_iter -5":
        opt["train"]["total_iter"] = -5
    elif change == "lr as text":
        opt["train"]["optim_g"]["lr"] = "1e-3"  # what YAML makes of `lr: 1e-3`
    elif change == "lr abc":
        opt["train"]["optim_g"]["lr"] = "abc"
    elif change == "no train set":
        del opt["datasets"]["train"]
    elif change == "no val_freq":
        del opt["val"]["val_freq"]
    elif change == "numeric name":
        opt["name"] = 2024
    elif change == "gpus":
        opt["num_gpu"] = torch.cuda.device_count() + 1
    elif change == "misspelt key":
        opt["datasets"]["val"]["type"] = "DerainPairedDataset"
        opt["datasets"]["val"]["gt_szie"] = 32


CARELESS = {
    "total_iter 0": "train.total_iter: 0 must be a positive whole number of iterations",
    "total_iter -5": "train.total_iter: -5 must be a positive whole number",
    "lr as text": "train.optim_g.lr: '1e-3' is a string (YAML 1.1 reads 1e-3 without a dot as text); write 1.0e-03",
    "lr abc": "train.optim_g.lr: 'abc' must be a number",
    "no train set": "datasets.train is missing",
    "no val_freq": "val.val_freq is missing",
    "numeric name": "name: 2024 must be a non-empty string",
    "gpus": "CUDA device(s); use num_gpu: 0 (the CPU), auto",
    "misspelt key": "x.yml: datasets.val: DerainPairedDataset: unknown option(s) 'gt_szie' (did you mean 'gt_size'",
}


@pytest.mark.parametrize("change", list(CARELESS))
def test_careless_options_are_refused_before_anything_is_built(tiny_lmdb: dict[str, str], change: str) -> None:
    opt = tiny_options(tiny_lmdb)
    _break(opt, change)
    with pytest.raises(OptionsError) as error:
        validate_options(opt, "x.yml", is_train=True)
    assert CARELESS[change] in str(error.value)


def test_a_quoted_override_stays_a_string() -> None:
    opt = apply_overrides({"name": "a", "train": {"lr": 1}}, ['name="1e-3"', "train.lr=1e-3"], "x.yml")
    assert opt == {"name": "1e-3", "train": {"lr": 1e-3}}


def test_cpu_threads_default_to_the_cores_shared_by_the_node_s_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(3).startswith("torch CPU threads: 3 per process (--threads;")
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        expected = max(1, (os.cpu_count() or 1) // 2)
        assert f"threads: {expected} per process ({os.cpu_count()} cores / 2 process(es)" in set_cpu_threads(None)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert "(OMP_NUM_THREADS=1;" in set_cpu_threads(None) and torch.get_num_threads() == 1
        with pytest.raises(OptionsError, match="--threads: 0 must be 1 or more"):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)
