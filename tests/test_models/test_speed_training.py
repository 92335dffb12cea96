"""The speed options through BasicSR's train and test loops: torchrun (DDP) across every stage, erl-test."""

from pathlib import Path

import pytest
from conftest import run_python, write_options
from test_models.test_erl_training import erl_options, stage_lines


@pytest.mark.slow
def test_torchrun_trains_every_stage_in_bf16_channels_last_compiled_then_tests(
    tmp_path: Path, tiny_lmdb: dict[str, str]
) -> None:
    opt = erl_options(tiny_lmdb, "erl_fast", [1, 1, 1, 1])
    opt["train"]["amp"] = "bf16"
    opt.update(channels_last=True, compile={"backend": "eager"})
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "erl_plugin.train"]
    trained = run_python([*args, "-opt", str(write_options(tmp_path, opt)), "--launcher", "pytorch"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "World size (gpu number): 2" in trained.stderr
    assert "Speed on cpu: train.amp bf16, val.amp none (fp32), channels_last True, compile {'backend': 'eager'}" in (
        trained.stderr
    )
    assert len(stage_lines(trained.stderr)) == 4
    test_opt = {k: opt[k] for k in ("model_type", "scale", "num_gpu", "manual_seed", "network_g", "channels_last")}
    test_opt.update(
        name="erl_fast_test",
        datasets={"test_1": opt["datasets"]["val"]},
        path={"pretrain_network_g": str(tmp_path / "experiments/erl_fast/models/net_g_latest.pth")},
        val={**opt["val"], "amp": "bf16", "save_img": True, "suffix": None},
    )
    tested = run_python(["-m", "erl_plugin.test", "-opt", str(write_options(tmp_path, test_opt, "t.yml"))], tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "val.amp bf16, channels_last True" in tested.stderr and "# psnr:" in tested.stderr
    assert len(list((tmp_path / "results/erl_fast_test/visualization/tiny_test").glob("*.png"))) == 2
