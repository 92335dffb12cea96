"""``erl-train`` / ``python -m erl_plugin.train``, ``erl-test``, option checks and torchrun on CPU."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_python, tiny_options, write_options

from erl_plugin.options import OptionsError, apply_overrides

ERL_TRAIN = shutil.which("erl-train", path=str(Path(sys.executable).parent))
ERL_TEST = shutil.which("erl-test", path=str(Path(sys.executable).parent))


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
def test_train_as_module_with_cwd_as_root(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt_file = write_options(tmp_path, tiny_options(tiny_lmdb, name="via_module"))
    result = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "experiments/via_module/models/net_g_latest.pth").is_file()
    assert "End of training" in result.stderr


def _expect_options_error(tmp_path: Path, opt: dict, *needles: str) -> None:
    opt_file = write_options(tmp_path, opt)
    result = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file)], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in (str(opt_file), *needles):
        assert needle in result.stderr
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
    result = run_python(["-m", "erl_plugin.train", "-opt", "missing.yml"], tmp_path)
    assert result.returncode == 2
    assert "error: missing.yml: options file not found" in result.stderr


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
