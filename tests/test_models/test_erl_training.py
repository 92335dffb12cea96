"""ERLModel through BasicSR's train loop in subprocesses: resume across stages, torchrun, bad options."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_python, tiny_options, write_options

from erl_plugin.archs import MEMD


def erl_options(data: dict[str, str], name: str, stage_iters: list[int]) -> dict:
    """Tiny MA_D + MLGD options whose learning rate halves inside every stage."""
    opt = tiny_options(data, name=name, total_iter=sum(stage_iters))
    opt["model_type"] = "ERLModel"
    opt["network_g"] = {"type": "ERLNet", "backbone": opt["network_g"], "entangle": "mlgd"}
    opt["path"]["pretrain_network_t"] = None
    opt["train"].update(
        strategy="MA_D",
        stage_iters=stage_iters,
        scheduler={"type": "MultiStepLR", "milestones": [1], "gamma": 0.5},
        stage_options={"stage2": {"optim_g": {"lr": 3e-4}}},
        feature_opt={"type": "FeatureReconstructionLoss", "loss_weight": 0.01},
    )
    opt["logger"]["save_checkpoint_freq"] = 1
    opt["val"]["val_freq"] = 100
    return opt


def lr_by_iter(log: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"iter:\s+(\d+), lr:\((\S+),\)", log)}


def stage_lines(log: str) -> list[str]:
    return re.findall(r"Stage \d/\d '\w+', iterations \d+-\d+", log)


@pytest.mark.slow
@pytest.mark.parametrize("resume_at", [3, 4])  # stage1 is iterations 3-4: mid-stage, then exactly at its end
def test_resume_restores_stage_and_learning_rate(tmp_path: Path, tiny_lmdb: dict[str, str], resume_at: int) -> None:
    opt_file = write_options(tmp_path, erl_options(tiny_lmdb, "erl", [2, 2, 2, 2]))
    full = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file)], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    assert stage_lines(full.stderr) == [
        "Stage 1/4 'teacher', iterations 1-2",
        "Stage 2/4 'stage1', iterations 3-4",
        "Stage 3/4 'stage2', iterations 5-6",
        "Stage 4/4 'stage3', iterations 7-8",
    ]
    # A run stopped after `resume_at`: the same experiment without what came later.
    stopped = tmp_path / "experiments/erl_stopped"
    shutil.copytree(tmp_path / "experiments/erl", stopped)
    for path in [*stopped.glob("training_states/*.state"), *stopped.glob("models/*_[0-9]*.pth")]:
        if int(re.search(r"(\d+)\.(state|pth)$", path.name).group(1)) > resume_at:
            path.unlink()
    for name in ("net_g_latest.pth", "net_t_latest.pth", "net_g_stage1.pth", "memd_stage1.pth", "net_g_stage2.pth"):
        (stopped / "models" / name).unlink(missing_ok=True)
    resumed = run_python(
        ["-m", "erl_plugin.train", "-opt", str(opt_file), "--auto_resume", "--set", "name=erl_stopped"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming training from epoch: " in resumed.stderr and f"iter: {resume_at}." in resumed.stderr
    expected = {i: lr for i, lr in lr_by_iter(full.stderr).items() if i > resume_at}
    assert lr_by_iter(resumed.stderr) == expected
    assert len(set(expected.values())) > 2  # the schedule really moves: per stage, and inside stages
    # The state restores stage1 (iterations 3-4), whether stopped inside it or at its end; then on as before.
    assert stage_lines(resumed.stderr) == stage_lines(full.stderr)[1:]
    memd = MEMD(num_feat=4, num_dense_layers=1, growth_rate=4)
    memd.load_state_dict(torch.load(stopped / "models/memd_stage1.pth", weights_only=True)["params"])
    teacher = torch.load(stopped / "models/net_t_latest.pth", weights_only=True)["params"]
    original = torch.load(tmp_path / "experiments/erl/models/net_t_teacher.pth", weights_only=True)["params"]
    assert all(torch.equal(teacher[k], original[k]) for k in original)  # the teacher never changes after its stage
    # Bit for bit the uninterrupted run, the residual encoder's copy at stage2's start included.
    final = torch.load(tmp_path / "experiments/erl/models/net_g_latest.pth", weights_only=True)["params"]
    again = torch.load(stopped / "models/net_g_latest.pth", weights_only=True)["params"]
    assert all(torch.equal(again[k], final[k]) for k in final)


@pytest.mark.slow
def test_torchrun_crosses_stage_boundaries(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt_file = write_options(tmp_path, erl_options(tiny_lmdb, "erl_ddp", [1, 1, 1, 1]))
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "erl_plugin.train"]
    result = run_python([*args, "-opt", str(opt_file), "--launcher", "pytorch"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "World size (gpu number): 2" in result.stderr
    assert len(stage_lines(result.stderr)) == 4
    assert (tmp_path / "experiments/erl_ddp/models/net_g_latest.pth").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o["train"].update(stage_iters=[1, 1, 1, 2]), "do not add up to train.total_iter = 4"),
        (
            lambda o: o["network_g"].update(backbone={"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3}),
            "network_g: backbone.type: EDSR does not implement the encoder/decoder protocol",
        ),
        (lambda o: o["train"].update(strategy="MA_X"), "train.strategy: 'MA_X' is not a strategy"),
        (
            lambda o: o["network_g"]["backbone"].update(global_residual=True),
            "network_g.backbone.global_residual: true, and a stage uses the feature loss",
        ),
    ],
)
def test_bad_erl_options_stop_before_training(tmp_path: Path, tiny_lmdb: dict[str, str], change, message: str) -> None:
    opt = erl_options(tiny_lmdb, "bad", [1, 1, 1, 1])
    change(opt)
    result = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_a_backbone_checkpoint_that_does_not_fit_is_refused_up_front(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    wider = tmp_path / "wider_memd.pth"
    torch.save({"params": MEMD(num_feat=8, num_dense_layers=1, growth_rate=4).state_dict()}, wider)
    for key in ("pretrain_network_g", "pretrain_network_t"):
        opt = erl_options(tiny_lmdb, "bad_checkpoint", [1, 1, 1, 1])
        opt["path"][key] = str(wider)
        result = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"path.{key}: {wider} does not fit" in result.stderr
        assert key.endswith("_t") or "a plain MEMD checkpoint does not match network_g" in result.stderr
        assert "tensor(s) of other shapes (first: stem.0.weight is [8, 3, 7, 7] in the checkpoint" in result.stderr


@pytest.mark.slow
def test_one_stage_alone_chained_to_an_earlier_run(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    first = run_python(
        ["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, erl_options(tiny_lmdb, "erl", [1, 1, 1, 1])))],
        tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    models = tmp_path / "experiments/erl/models"
    opt = erl_options(tiny_lmdb, "stage3_alone", [1])
    for key in ("strategy", "stage_iters", "stage_options"):
        del opt["train"][key]
    opt["train"].update(
        stages=[{"name": "stage3", "iters": 2, "train": ["residual_encoder", "decoder"], "losses": ["pixel"]}],
        total_iter=2,
    )
    opt["path"].update(
        pretrain_network_g=str(models / "net_g_stage2.pth"), pretrain_network_t=str(models / "net_t_teacher.pth")
    )
    alone = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt, "alone.yml"))], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert stage_lines(alone.stderr) == ["Stage 1/1 'stage3', iterations 1-2"]
    start = torch.load(models / "net_g_stage2.pth", weights_only=True)["params"]
    end = torch.load(tmp_path / "experiments/stage3_alone/models/net_g_latest.pth", weights_only=True)["params"]
    encoder_keys = [
        k
        for k in start
        if k.startswith("backbone.")
        and not k.startswith(("backbone.ups", "backbone.fusions", "backbone.decoder_blocks", "backbone.head"))
    ]
    assert encoder_keys and all(torch.equal(start[k], end[k]) for k in encoder_keys)  # the main encoder stayed frozen
    assert not torch.equal(start["backbone.head.weight"], end["backbone.head.weight"])  # the decoder trained


@pytest.mark.slow
def test_erl_test_runs_a_trained_erlnet(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = erl_options(tiny_lmdb, "erl", [1, 1, 1, 1])
    trained = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    test_opt = {k: opt[k] for k in ("model_type", "scale", "num_gpu", "manual_seed", "network_g")}
    test_opt.update(
        name="erl_test",
        datasets={"test_1": opt["datasets"]["val"]},
        path={"pretrain_network_g": str(tmp_path / "experiments/erl/models/net_g_latest.pth")},
        val={**opt["val"], "save_img": True, "suffix": None},
    )
    tested = run_python(["-m", "erl_plugin.test", "-opt", str(write_options(tmp_path, test_opt, "t.yml"))], tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "# psnr:" in tested.stderr
    assert len(list((tmp_path / "results/erl_test/visualization/tiny_test").glob("*.png"))) == 2
