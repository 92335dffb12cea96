"""ERLModel in-process: every stage of every strategy trains exactly its branches."""

import logging
from pathlib import Path

import pytest
import torch

from erl_plugin.models import ERLModel
from erl_plugin.models.stages import STRATEGIES

BACKBONE = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


def model_options(folder: Path, strategy: str, entangle: str = "mlgd", teacher_mode: str = "independent") -> dict:
    """Options for ERLModel built directly (what BasicSR's parse_options would have added included)."""
    stage_count = len(STRATEGIES[strategy]) + 1
    return {
        "name": "erl",
        "is_train": True,
        "dist": False,
        "num_gpu": 0,
        "rank": 0,
        "world_size": 1,
        "network_g": {"type": "ERLNet", "backbone": BACKBONE, "entangle": entangle},
        "path": {"models": str(folder), "training_states": str(folder)},
        "train": {
            "strategy": strategy,
            "teacher_mode": teacher_mode,
            "stage_iters": [2] * stage_count,
            "total_iter": 2 * stage_count,
            "optim_g": {"type": "Adam", "lr": 1e-2},
            "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
            "feature_opt": {"type": "FeatureReconstructionLoss", "loss_weight": 0.01},
        },
    }


# DT has no stage1 decoder to align a teacher with: parse_stages refuses that (tested there).
CASES = [
    (strategy, entangle, mode)
    for strategy in STRATEGIES
    for entangle, mode in (("clgd", "independent"), ("mlgd", "independent"), ("mlgd", "aligned"))
    if not (strategy == "DT" and mode == "aligned")
]


@pytest.mark.parametrize(("strategy", "entangle", "teacher_mode"), CASES)
def test_each_stage_changes_only_its_branches(tmp_path: Path, strategy: str, entangle: str, teacher_mode: str) -> None:
    torch.manual_seed(0)
    model = ERLModel(model_options(tmp_path, strategy, entangle, teacher_mode))
    bare_g, bare_t = model.net_g, model.net_t
    params = {f"g.{n}": p for n, p in bare_g.named_parameters()} | {f"t.{n}": p for n, p in bare_t.named_parameters()}
    batch = {"lq": torch.rand(2, 3, 16, 16), "gt": torch.rand(2, 3, 16, 16)}
    seen_stages = []
    for current_iter in range(1, model.opt["train"]["total_iter"] + 1):
        model.update_learning_rate(current_iter)
        model.feed_data(batch)
        stage = model.stage
        seen_stages.append(stage.name)
        trainable = {id(p) for branch in stage.train for p in model._trainable(branch)}
        before = {name: p.detach().clone() for name, p in params.items()}
        model.optimize_parameters(current_iter)
        changed = {name for name, p in params.items() if not torch.equal(p, before[name])}
        assert changed, stage.name
        assert all(id(params[name]) in trainable for name in changed), (stage.name, changed)
        frozen = [p for p in params.values() if id(p) not in trainable]
        assert all(p.grad is None and not p.requires_grad for p in frozen), stage.name
        assert not bare_t.training or stage.trains_teacher
        # the optimizer holds exactly the stage's parameters
        assert {id(p) for group in model.optimizer_g.param_groups for p in group["params"]} == trainable
    assert seen_stages == [s.name for s in model.stages for _ in range(2)]


def test_stage1_end_is_a_plain_memd_checkpoint(tmp_path: Path) -> None:
    from erl_plugin.archs import MEMD

    model = ERLModel(model_options(tmp_path, "MA_A"))
    batch = {"lq": torch.rand(1, 3, 16, 16), "gt": torch.rand(1, 3, 16, 16)}
    for current_iter in range(1, 6):
        model.update_learning_rate(current_iter)
        model.feed_data(batch)
        model.optimize_parameters(current_iter)
    state = torch.load(tmp_path / "memd_stage1.pth", weights_only=True)
    memd = MEMD(**{k: v for k, v in BACKBONE.items() if k != "type"})
    memd.load_state_dict(state["params"])
    assert (tmp_path / "net_t_teacher.pth").is_file() and (tmp_path / "net_g_stage1.pth").is_file()

    # That checkpoint starts a new ERL-Net: one line says what loaded and what starts fresh, no warning per key.
    logger = logging.getLogger("basicsr")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        options = model_options(tmp_path / "next", "MA_A")
        options["path"].update(pretrain_network_g=str(tmp_path / "memd_stage1.pth"), strict_load_g=True)
        restarted = ERLModel(options)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [record.getMessage() for record in records]
    assert not [record for record in records if record.levelno >= logging.WARNING], messages
    assert any("a plain MEMD checkpoint" in m and "residual encoder starts as a copy" in m for m in messages)
    assert torch.equal(restarted.net_g.backbone.state_dict()["stem.0.weight"], state["params"]["stem.0.weight"])


def _encoders(model: ERLModel) -> tuple[dict, dict]:
    """The main encoder's and the residual encoder's weights, by the residual encoder's keys."""
    residual = {k: v.detach().clone() for k, v in model.net_g.residual_encoder.state_dict().items()}
    main = {k: v.detach().clone() for k, v in model.net_g.backbone.state_dict().items() if k in residual}
    return main, residual


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("ren_init", ["main", "random"])
def test_residual_encoder_starts_from_the_trained_main_encoder(tmp_path: Path, strategy: str, ren_init: str) -> None:
    torch.manual_seed(0)
    options = model_options(tmp_path, strategy)
    options["network_g"]["ren_init"] = ren_init
    model = ERLModel(options)
    batch = {"lq": torch.rand(2, 3, 16, 16), "gt": torch.rand(2, 3, 16, 16)}
    first = next(s for s in model.stages if "residual_encoder" in s.train)
    initial = _encoders(model)
    before = None
    for current_iter in range(1, first.first + 1):
        if current_iter == first.first:
            before = _encoders(model)
        model.update_learning_rate(current_iter)
        if current_iter == first.first:
            break
        model.feed_data(batch)
        model.optimize_parameters(current_iter)
    main, residual = _encoders(model)
    assert model.stage is first
    if ren_init == "main":
        # a copy of the main encoder as trained so far (stage I changed it, when there is one)
        assert all(torch.equal(residual[k], main[k]) for k in main)
        assert strategy == "DT" or any(not torch.equal(initial[1][k], residual[k]) for k in residual)
    else:
        assert all(torch.equal(residual[k], before[1][k]) for k in residual)
        assert any(not torch.equal(residual[k], main[k]) for k in main)

    # Entering that stage again as a resume does is no switch: what the state holds is kept.
    model.feed_data(batch)
    model.optimize_parameters(first.first)
    trained = _encoders(model)[1]
    model._enter_stage(model.stage_index, resuming=True)
    assert all(torch.equal(trained[k], _encoders(model)[1][k]) for k in trained)
