"""Training stages of ERL-Net (Table 1), from a strategy name or an explicit list, and each stage's optimizer
and scheduler options (:func:`stage_training_options`, checked up front by :func:`check_optimizers`).

A stage trains some branches with some losses for some iterations:

========  ===================================  =========================================
strategy  stages after the teacher             (branches trained; losses)
========  ===================================  =========================================
MA_A      stage1, stage2                       (MEN, MDE; pixel), (REN; pixel + feature)
MA_B      stage1, stage2                       (MEN, MDE; pixel), (REN, MDE; pixel + feature)
MA_C      stage1, stage2, stage3               ... as MA_A, then (MDE; pixel)
MA_D      stage1, stage2, stage3               ... as MA_A, then (REN, MDE; pixel)
DT        joint                                (MEN, MDE, REN; pixel + feature)
========  ===================================  =========================================

The teacher (the clean-to-clean network whose encoder gives the feature loss its targets) is a
stage of the same run unless ``path.pretrain_network_t`` loads it. With ``teacher_mode:
independent`` (the paper's) it is a whole network trained gt to gt, first. With ``teacher_mode:
aligned`` only its encoder is trained, on clean images through the frozen stage-I decoder, right
after stage1: two separately trained encoders need not share a feature space (channels are not
aligned between them), so an independent teacher's features can be an unreachable target for the
main encoder plus residual, while an aligned teacher's live in the space the decoder reads.

Stage I trains the basic model. When it is already trained (a pretrained restorer as the backbone,
``network_g.backbone.checkpoint``, or ``path.pretrain_network_g``), ``0`` for stage1 in
``train.stage_iters`` skips it: ``[300, 0, 2000, 500]`` trains the teacher, then stage2 and stage3. The
stage that first trains the residual encoder still starts it as a copy of the main encoder
(``ren_init: main``). An explicit ``train.stages`` list simply leaves stage I out.
"""

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from erl_plugin.archs.pretrained import is_pretrained
from erl_plugin.models.schedulers import build_scheduler, check_plateau_metric
from erl_plugin.models.validation import first_validation_phase

GENERATOR_BRANCHES = ("main_encoder", "decoder", "residual_encoder")
TEACHER_BRANCHES = ("teacher", "teacher_encoder")
LOSSES = ("pixel", "feature")
TEACHER_MODES = ("independent", "aligned")
TEACHER_INITS = ("random", "main")
"""``train.teacher_init``: the teacher starts from its own initialisation, or as a copy of the deraining
backbone as it stands when the teacher's stage begins (after stage1, or loaded by ``pretrain_network_g``)."""
STAGE_KEYS = ("name", "iters", "train", "losses", "optim_g", "scheduler")
SKIPPABLE = "stage1"
"""The strategies' stage I (the basic model, trained alone): ``0`` iterations in ``train.stage_iters`` skip it
when the backbone is already trained (``network_g.backbone.checkpoint`` or ``path.pretrain_network_g``)."""

_MEN_MDE = ("main_encoder", "decoder")
STRATEGIES: dict[str, tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]] = {
    "MA_A": (("stage1", _MEN_MDE, ("pixel",)), ("stage2", ("residual_encoder",), ("pixel", "feature"))),
    "MA_B": (
        ("stage1", _MEN_MDE, ("pixel",)),
        ("stage2", ("residual_encoder", "decoder"), ("pixel", "feature")),
    ),
    "MA_C": (
        ("stage1", _MEN_MDE, ("pixel",)),
        ("stage2", ("residual_encoder",), ("pixel", "feature")),
        ("stage3", ("decoder",), ("pixel",)),
    ),
    "MA_D": (
        ("stage1", _MEN_MDE, ("pixel",)),
        ("stage2", ("residual_encoder",), ("pixel", "feature")),
        ("stage3", ("residual_encoder", "decoder"), ("pixel",)),
    ),
    "DT": (("joint", (*_MEN_MDE, "residual_encoder"), ("pixel", "feature")),),
}


class StageError(ValueError):
    """Stage options that cannot work; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Stage:
    """One training stage: iterations ``first..last`` (1-based, inclusive) of the run."""

    name: str
    first: int
    last: int
    train: tuple[str, ...]
    losses: tuple[str, ...]
    entangled: bool
    """Whether the residual encoder takes part (it has been or is being trained)."""
    optim_g: Mapping[str, Any]
    scheduler: Mapping[str, Any]

    @property
    def trains_teacher(self) -> bool:
        return any(branch in TEACHER_BRANCHES for branch in self.train)

    @property
    def iters(self) -> int:
        return self.last - self.first + 1


def _check_stage(raw: Mapping[str, Any], where: str, allowed_branches: tuple[str, ...]) -> None:
    unknown = set(raw) - set(STAGE_KEYS)
    if unknown:
        raise StageError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(STAGE_KEYS)}")
    for key in ("name", "iters", "train", "losses"):
        if key not in raw:
            raise StageError(f"{where}.{key} is missing")
    if not isinstance(raw["iters"], int) or raw["iters"] < 1:
        raise StageError(f"{where}.iters: {raw['iters']!r} must be a positive integer")
    for key, allowed in (("train", allowed_branches), ("losses", LOSSES)):
        values = raw[key]
        if not isinstance(values, (list, tuple)) or not values:
            raise StageError(f"{where}.{key}: expected a non-empty list; allowed: {', '.join(allowed)}")
        for value in values:
            if value not in allowed:
                raise StageError(f"{where}.{key}: {value!r} is not allowed; allowed: {', '.join(allowed)}")
    if any(b in TEACHER_BRANCHES for b in raw["train"]) and any(b in GENERATOR_BRANCHES for b in raw["train"]):
        raise StageError(f"{where}.train: a stage trains either the teacher or the deraining network, not both")


def _backbone_trained(opt: Mapping[str, Any]) -> bool:
    """Whether the options start from a trained backbone: ``network_g.backbone.checkpoint`` (a pretrained
    restorer) or ``path.pretrain_network_g``."""
    network_g = opt.get("network_g")
    backbone = network_g.get("backbone") if isinstance(network_g, Mapping) else None
    return is_pretrained(backbone) or bool((opt.get("path") or {}).get("pretrain_network_g"))


def _skip_stages(layout: list[dict[str, Any]], backbone_trained: bool) -> list[dict[str, Any]]:
    """``layout`` without its stages of 0 iterations, after checking that only stage1 is, and may be, skipped."""
    skipped = [stage["name"] for stage in layout if type(stage["iters"]) is int and stage["iters"] == 0]
    for name in skipped:
        if name != SKIPPABLE:
            teacher = "; a trained teacher is loaded with path.pretrain_network_t" if name == "teacher" else ""
            raise StageError(
                f"train.stage_iters: {name} has 0 iterations; only {SKIPPABLE} (the basic model) may be skipped, "
                f"when the backbone is already trained{teacher}"
            )
        if not backbone_trained:
            raise StageError(
                f"train.stage_iters: {SKIPPABLE} has 0 iterations, but nothing has trained the backbone: skipping "
                "stage I needs a trained one, network_g.backbone.checkpoint (a pretrained restorer) or "
                "path.pretrain_network_g"
            )
    return [stage for stage in layout if stage["name"] not in skipped]


def _strategy_stages(
    train_opt: Mapping[str, Any], teacher_stage: str | None, backbone_trained: bool
) -> list[dict[str, Any]]:
    strategy = train_opt["strategy"]
    if strategy not in STRATEGIES:
        raise StageError(f"train.strategy: {strategy!r} is not a strategy; allowed: {', '.join(STRATEGIES)}")
    layout = [
        {"name": name, "train": list(train), "losses": list(losses)} for name, train, losses in STRATEGIES[strategy]
    ]
    if teacher_stage == "teacher":
        layout.insert(0, {"name": "teacher", "train": ["teacher"], "losses": ["pixel"]})
    elif teacher_stage == "teacher_encoder":
        if layout[0]["name"] != "stage1":
            raise StageError(f"train.teacher_mode: aligned needs a stage1 that trains the decoder; {strategy} has none")
        layout.insert(1, {"name": "teacher", "train": ["teacher_encoder"], "losses": ["pixel"]})
    names = [stage["name"] for stage in layout]
    iters = train_opt.get("stage_iters")
    if not isinstance(iters, (list, tuple)) or len(iters) != len(layout):
        raise StageError(f"train.stage_iters: {iters!r} must list the iterations of {len(layout)} stages: {names}")
    overrides = train_opt.get("stage_options") or {}
    unknown = set(overrides) - set(names)
    if unknown:
        raise StageError(f"train.stage_options: unknown stage(s) {sorted(unknown)}; stages: {', '.join(names)}")
    for stage, count in zip(layout, iters, strict=True):
        stage["iters"] = count
        extra = overrides.get(stage["name"]) or {}
        bad = set(extra) - {"optim_g", "scheduler"}
        if bad:
            raise StageError(
                f"train.stage_options.{stage['name']}: unknown key(s) {sorted(bad)}; allowed: optim_g, scheduler"
            )
        stage.update(extra)
    return _skip_stages(layout, backbone_trained)


def parse_stages(opt: Mapping[str, Any]) -> list[Stage]:
    """Expand ``train.strategy`` (or read ``train.stages``) into checked :class:`Stage` objects.

    A strategy's stage1 with 0 iterations in ``train.stage_iters`` is left out (:data:`SKIPPABLE`).

    Raises:
        StageError: naming the key: unknown strategy, branch or loss; iterations that do not add up
            to ``train.total_iter``; a feature loss with no teacher or no ``train.feature_opt``; a
            duplicate stage name; 0 iterations for a stage other than stage1, or for stage1 without a
            trained backbone.
    """
    train_opt = opt.get("train") or {}
    mode = train_opt.get("teacher_mode", "independent")
    if mode not in TEACHER_MODES:
        raise StageError(f"train.teacher_mode: {mode!r} is not allowed; allowed: {', '.join(TEACHER_MODES)}")
    teacher_init = train_opt.get("teacher_init", "random")
    if teacher_init not in TEACHER_INITS:
        raise StageError(f"train.teacher_init: {teacher_init!r} is not allowed; allowed: {', '.join(TEACHER_INITS)}")
    balance = train_opt.get("balance_feature_loss", False)
    if not isinstance(balance, bool):
        raise StageError(f"train.balance_feature_loss: {balance!r} must be true or false")
    if balance and first_validation_phase(opt) is None:
        raise StageError("train.balance_feature_loss: true measures the gradients on datasets.val, which is missing")
    pretrained_teacher = bool((opt.get("path") or {}).get("pretrain_network_t"))
    teacher_branch = "teacher" if mode == "independent" else "teacher_encoder"
    if ("strategy" in train_opt) == ("stages" in train_opt):
        raise StageError("train: give either strategy (MA_A, MA_B, MA_C, MA_D, DT) or an explicit stages list")
    if "strategy" in train_opt:
        where = "train.stage_iters"
        teacher_stage = None if pretrained_teacher else teacher_branch
        raw_stages = _strategy_stages(train_opt, teacher_stage, _backbone_trained(opt))
    else:
        where = "train.stages"
        raw_stages = train_opt["stages"]
        if not isinstance(raw_stages, Sequence) or not raw_stages:
            raise StageError("train.stages: expected a non-empty list of stages")
    allowed = (*GENERATOR_BRANCHES, teacher_branch)
    stages: list[Stage] = []
    first = 1
    teacher_ready = pretrained_teacher
    residual_seen = False
    for index, raw in enumerate(raw_stages):
        if not isinstance(raw, Mapping):
            raise StageError(f"train.stages[{index}]: expected a mapping with {', '.join(STAGE_KEYS)}")
        stage_where = f"train.stages[{index}]" if where == "train.stages" else f"train.strategy stage {raw['name']!r}"
        _check_stage(raw, stage_where, allowed)
        if raw["name"] in {stage.name for stage in stages}:
            raise StageError(f"{stage_where}.name: {raw['name']!r} is used twice")
        if "feature" in raw["losses"] and not teacher_ready:
            raise StageError(
                f"{stage_where}.losses: the feature loss needs a teacher: train one in an earlier stage "
                f"(branch {teacher_branch!r}) or load one with path.pretrain_network_t"
            )
        residual_seen = residual_seen or "residual_encoder" in raw["train"]
        stages.append(
            Stage(
                name=raw["name"],
                first=first,
                last=first + raw["iters"] - 1,
                train=tuple(raw["train"]),
                losses=tuple(raw["losses"]),
                entangled=residual_seen,
                optim_g=raw.get("optim_g") or {},
                scheduler=raw.get("scheduler") or {},
            )
        )
        teacher_ready = teacher_ready or teacher_branch in raw["train"]
        first += raw["iters"]
    if any("feature" in stage.losses for stage in stages) and not train_opt.get("feature_opt"):
        raise StageError(
            "train.feature_opt is missing: a stage uses the feature loss (type: FeatureReconstructionLoss)"
        )
    total = train_opt.get("total_iter")
    if first - 1 != total:
        counts = " + ".join(str(stage.iters) for stage in stages)
        raise StageError(
            f"{where}: the stages' iterations {counts} = {first - 1} do not add up to train.total_iter = {total}"
        )
    return stages


def stage_training_options(train: Mapping[str, Any], stage: Stage | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stage's optimizer and scheduler options: ``train.optim_g`` and ``train.scheduler`` with the
    stage's overrides on top (copies; the whole run's for ``stage`` None). A stage scheduler of another
    ``type`` than the run's replaces it: the run's arguments belong to its own type."""
    optim_overrides, scheduler_overrides = (stage.optim_g, stage.scheduler) if stage is not None else ({}, {})
    optim_opt = {**copy.deepcopy(train.get("optim_g") or {}), **copy.deepcopy(dict(optim_overrides))}
    base_scheduler = dict(train.get("scheduler") or {})
    if scheduler_overrides.get("type", base_scheduler.get("type")) != base_scheduler.get("type"):
        base_scheduler = {}
    scheduler_opt = {**copy.deepcopy(base_scheduler), **copy.deepcopy(dict(scheduler_overrides))}
    return optim_opt, scheduler_opt


def check_optimizers(opt: Mapping[str, Any], stages: Sequence[Stage | None] = (None,)) -> None:
    """Build the optimizer and scheduler of every stage (``None``: the whole run's) on a stand-in
    parameter, as training will, so that a bad value fails at start-up, not at a stage switch.

    Raises:
        ValueError: naming the stage and key; BasicSR 1.4.2 builds Adam only; a ``PlateauLR`` without its
            validation metric, in a model that cannot run it (SRModel), or stopping before the last stage.
    """
    train = opt.get("train") or {}
    for position, stage in enumerate(stages, 1):
        where = f"stage {stage.name!r}" if stage is not None else "train"
        optim_opt, scheduler_opt = stage_training_options(train, stage)
        if scheduler_opt.get("type") == "PlateauLR" and opt.get("model_type") == "SRModel":
            raise ValueError(
                f"{where}: scheduler.type: PlateauLR needs model_type DerainModel or ERLModel (not SRModel)"
            )
        check_plateau_metric(opt, scheduler_opt, where)
        if scheduler_opt.get("stop") and position < len(stages):
            raise ValueError(
                f"{where}: scheduler.stop: a plateau stop ends the whole run; only the last stage "
                f"({getattr(stages[-1], 'name', 'train')!r}) may stop"
            )
        optim_type = optim_opt.pop("type", None)
        if optim_type != "Adam":
            raise ValueError(f"{where}: optim_g.type: {optim_type!r}; basicsr 1.4.2 builds Adam only")
        try:
            optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], **optim_opt)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: optim_g: {error}") from None
        if not scheduler_opt:
            raise ValueError(f"{where}: train.scheduler is missing (e.g. type: MultiStepLR, milestones: [], gamma: 1)")
        build_scheduler(optimizer, scheduler_opt, where)
