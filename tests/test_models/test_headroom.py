"""The entanglement headroom: what the frozen decoder makes of the student's, the target's and the
teacher's embeddings."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from basicsr.utils import tensor2img
from conftest import run_python, write_options
from test_erl_model import model_options
from test_erl_training import erl_options

from erl_plugin.archs import ERLNet
from erl_plugin.metrics.protocols import psnr
from erl_plugin.models import ERLModel
from erl_plugin.models.headroom import Headroom, measure_headroom

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


def pairs(count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    result = []
    for _ in range(count):
        clean = torch.rand(1, 3, 16, 16, generator=generator)
        result.append(((clean + 0.3 * torch.rand(1, 3, 16, 16, generator=generator)).clamp(0, 1), clean))
    return result


def test_figures_are_the_decodings_they_name() -> None:
    torch.manual_seed(0)
    net = ERLNet(BACKBONE, entangle="mlgd").eval()
    teacher = copy.deepcopy(net.backbone).train()  # aligned, a copy of the main encoder: target = what the
    data = pairs()  # decoder makes of the clean image's own embedding, the teacher's clean-to-clean output
    result = measure_headroom(net, teacher, data, aligned=True, dataset="tiny")
    score = lambda out, clean: psnr(tensor2img(out.clamp(0, 1)), tensor2img(clean), "basicsr")  # noqa: E731
    with torch.no_grad():
        student = sum(score(net(rainy), clean) for rainy, clean in data) / len(data)
        teacher_out = sum(score(net.backbone(clean), clean) for _, clean in data) / len(data)
    assert result.images == 3 and result.dataset == "tiny"
    assert result.student == pytest.approx(student)
    assert result.target == pytest.approx(teacher_out) and result.teacher == pytest.approx(teacher_out)
    assert result.rainy == pytest.approx(sum(score(r, c) for r, c in data) / len(data))
    assert net.training is False and teacher.training is True


def test_clgd_replaces_the_bottleneck_only() -> None:
    torch.manual_seed(0)
    net = ERLNet(BACKBONE, entangle="clgd").eval()
    teacher = copy.deepcopy(net.backbone)
    with torch.no_grad():
        for layer in teacher.modules():  # a teacher whose bottleneck is very different
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(3)
    clgd = measure_headroom(net, teacher, pairs(), aligned=True)
    assert clgd.target != pytest.approx(clgd.teacher)  # the skips stay the student's


def test_report_says_when_the_target_is_no_better() -> None:
    fields = {"dataset": "val", "images": 18, "rainy": 18.4, "teacher": 57.98, "teacher_without_features": 69.24}
    flat = Headroom(student=22.35, midpoint=21.5, target=20.53, **fields)
    assert "the feature loss has nothing to give here" in flat.report()
    assert "does not beat the student by 1 dB" in flat.report()
    room = Headroom(student=22.09, midpoint=27.61, target=37.11, **fields)
    assert "+15.02 over the student" in room.report() and "nothing to give" not in room.report()
    assert room.as_dict()["margin"] == pytest.approx(15.02) and room.as_dict()["protocol"] == "basicsr"


def test_aligned_teacher_starts_from_the_backbone_and_is_validated_clean_to_clean(tmp_path: Path) -> None:
    torch.manual_seed(0)
    options = model_options(tmp_path, "MA_D", teacher_mode="aligned")
    options["train"]["teacher_init"] = "main"
    model = ERLModel(options)
    batch = {"lq": torch.rand(1, 3, 16, 16), "gt": torch.rand(1, 3, 16, 16)}
    teacher_stage = next(s for s in model.stages if s.trains_teacher)
    for current_iter in range(1, teacher_stage.first + 1):
        model.update_learning_rate(current_iter)
        if current_iter == teacher_stage.first:
            break
        model.feed_data(batch)
        model.optimize_parameters(current_iter)
    backbone = model.net_g.backbone.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in model.net_t.state_dict().items())
    model.feed_data(batch)
    model.test()
    with torch.no_grad():
        expected = model.net_g.backbone.decode(*model.net_t.encode(batch["gt"]), batch["gt"])
    assert torch.allclose(model.output, expected)


@pytest.mark.slow
def test_the_feature_stage_logs_its_headroom(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt_file = write_options(tmp_path, erl_options(tiny_lmdb, "erl", [1, 2, 1, 1]))
    result = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Headroom on tiny_test (2 images, PSNR dB, basicsr protocol)") == 1
    logged = json.loads((tmp_path / "experiments/erl/headroom.json").read_text())
    assert logged["balanced_lambda"] > 0 and logged["pixel_gradient"] > 0

    # The tool, on the checkpoints that stage began from, measures the same.
    models = tmp_path / "experiments/erl/models"
    tool = run_python(
        [str(ROOT / "tools/headroom.py"), "-opt", str(opt_file), "--network-g", str(models / "memd_stage1.pth"),
         "--teacher", str(models / "net_t_teacher.pth"), "--json", "headroom.json"],
        tmp_path,
    )  # fmt: skip
    assert tool.returncode == 0, tool.stderr[-3000:]
    assert tool.stdout.startswith("Headroom on tiny_test (2 images")
    measured = json.loads((tmp_path / "headroom.json").read_text())
    for key in ("student", "midpoint", "target", "teacher", "teacher_without_features", "balanced_lambda"):
        assert measured[key] == pytest.approx(logged[key], rel=1e-4), key

    missing = run_python(
        [str(ROOT / "tools/headroom.py"), "-opt", str(opt_file), "--network-g", str(models / "nothing.pth"),
         "--teacher", str(models / "net_t_teacher.pth")],
        tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and "nothing.pth" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_balanced_lambda_equalises_gradients_and_survives_resume(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = erl_options(tiny_lmdb, "balanced", [1, 2, 2, 1])  # stage2 is iterations 4-5
    opt["train"]["balance_feature_loss"] = True
    opt_file = write_options(tmp_path, opt)
    result = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "experiments/balanced"
    balanced = json.loads((experiment / "headroom.json").read_text())["balanced_lambda"]
    assert result.stderr.count(f"train.balance_feature_loss: λ_fre 0.01 -> {balanced:.4g}") == 1
    state = torch.load(experiment / "training_states/4.state", weights_only=False)
    assert state["feature_weight"] == pytest.approx(balanced)

    # Resumed inside stage2: no new measurement, the same λ_fre, the same weights at the end.
    copy_dir = tmp_path / "experiments/balanced_again"
    shutil.copytree(experiment, copy_dir)
    for path in [*copy_dir.glob("training_states/[5-9].state"), *copy_dir.glob("models/*_[5-9].pth")]:
        path.unlink()
    for name in ("net_g_latest.pth", "net_t_latest.pth", "net_g_stage2.pth"):
        (copy_dir / "models" / name).unlink(missing_ok=True)
    resumed = run_python(
        ["-m", "erl_plugin.train", "-opt", str(opt_file), "--auto_resume", "--set", "name=balanced_again"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "iter: 4." in resumed.stderr and "train.balance_feature_loss: λ_fre" not in resumed.stderr
    final = torch.load(experiment / "models/net_g_latest.pth", weights_only=True)["params"]
    again = torch.load(copy_dir / "models/net_g_latest.pth", weights_only=True)["params"]
    assert all(torch.equal(again[k], final[k]) for k in final)
