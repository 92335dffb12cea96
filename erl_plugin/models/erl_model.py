"""ERLModel: BasicSR's training loop running ERL-Net's staged strategies (Table 1) in one run.

The deraining network ``net_g`` is an :class:`~erl_plugin.archs.erl_arch.ERLNet`; the teacher
``net_t`` has the structure of its backbone. The active stage follows the iteration: at each stage
switch every parameter is frozen, the stage's branches are unfrozen, the networks are re-wrapped
(DDP sees only what trains) and fresh optimizers and schedulers are built from copies of the
options, with schedules counted from the stage's first iteration. The teacher, once trained, is
frozen and in eval mode, is never DDP-wrapped, and is in no optimizer and no EMA; for the feature
loss it runs its encoder only, under ``no_grad``; during its own stage, validation scores it clean
to clean (``train.teacher_init: main`` starts it as a copy of the deraining backbone).

Stage switches also carry ERL-Net's initialisations: with ``ren_init: main`` the stage that first
trains the residual encoder starts it as a copy of the main encoder as trained so far; the first stage
with the feature loss logs the entanglement headroom (:mod:`erl_plugin.models.headroom`) and writes
``headroom.json``. Neither is redone when a run resumes inside the stage.

Checkpoints: ``net_g_<iter>.pth`` and ``net_t_<iter>.pth`` with every save; at the end of each stage
``net_g_<stage>.pth`` (and ``net_t_teacher.pth``); at the end of a stage that does not use the
residual encoder (stage1), also ``<backbone>_<stage>.pth``, the plain backbone: a usable MEMD
baseline (``network_g: {type: MEMD}``). Training states record the stage, so ``--auto_resume``
restores it with its optimizers and schedulers, mid-stage or exactly at a boundary.
"""

import copy
import itertools
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.losses import build_loss
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from torch import Tensor, nn

from erl_plugin.archs.erl_arch import ERLNet
from erl_plugin.archs.protocol import part_parameters
from erl_plugin.models.derain_model import DerainModel
from erl_plugin.models.headroom import Headroom, measure_headroom
from erl_plugin.models.schedulers import build_scheduler
from erl_plugin.models.stages import Stage, check_optimizers, parse_stages, stage_training_options
from erl_plugin.models.validation import first_validation_phase
from erl_plugin.utils.checkpoint import atomic_save, check_pretrained_fits
from erl_plugin.utils.outputs import write_text
from erl_plugin.utils.resume import ResumeError
from erl_plugin.utils.speed import autocast

HEADROOM_IMAGES = 32
"""Validation images the headroom at the start of the feature loss is measured on."""


class AlignedTeacher(nn.Module):
    """The teacher's encoder followed by a frozen decoder: ``teacher_mode: aligned`` trains this."""

    def __init__(self, teacher: nn.Module, decoder_net: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.decoder_net = decoder_net

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder_net.decode(*self.teacher.encode(x), x)


@MODEL_REGISTRY.register()
class ERLModel(DerainModel):
    """Staged ERL-Net training; see the module docstring. Options: ``options/erl_rain100h.yml``."""

    def __init__(self, opt: dict[str, Any]) -> None:
        self.remember_options(opt)
        BaseModel.__init__(self, opt)  # SRModel's own __init__ would DDP-wrap before freezing
        net_g = build_network(copy.deepcopy(opt["network_g"]))
        if not isinstance(net_g, ERLNet):
            raise ValueError(f"network_g.type: ERLModel trains ERLNet, got {opt['network_g']['type']!r}")
        self.net_g: nn.Module = self.prepare_network(net_g)  # channels_last, compile (DerainModel)
        # The teacher starts from its own initialisation, not from a backbone.checkpoint (teacher_init: main copies).
        self.net_t: nn.Module = self.prepare_network(net_g.new_backbone(weights=False))
        self.print_network(self.net_g)
        path = opt["path"]
        self._load_checkpoint(
            self.net_g,
            "pretrain_network_g",
            path.get("strict_load_g", True),
            path.get("param_key_g", "params"),
        )
        self._load_checkpoint(self.net_t, "pretrain_network_t", path.get("strict_load_t", True), "params")
        # A residual encoder loaded from a user's ERLNet checkpoint is kept; one from a resumed state is
        # what the stage switch of the interrupted run would have seen.
        self.keep_loaded_residual = net_g.residual_from_checkpoint and not path.get("resume_state")
        self.net_aligned: nn.Module | None = None
        self.stages: list[Stage] = []
        self.stage_index: int | None = None
        if self.is_train:
            self.init_training_settings()

    def _load_checkpoint(self, net: nn.Module, key: str, strict: bool, param_key: str) -> None:
        load_path = self.opt["path"].get(key)
        if load_path is None:
            return
        try:
            self.load_network(net, load_path, strict, param_key)
        except (ValueError, RuntimeError, KeyError) as error:
            raise ValueError(f"path.{key}: {load_path}: {error}") from None

    def init_training_settings(self) -> None:
        train_opt = self.opt["train"]
        self.stages = parse_stages(self.opt)
        if self.get_bare_model(self.net_g).hooked and any("teacher_encoder" in stage.train for stage in self.stages):
            raise ValueError(
                "train.teacher_mode: aligned runs the teacher's encoder through the backbone's decoder, which a "
                "backbone entangled through network_g.entangle_at has not as a separate call; use teacher_mode: "
                "independent, or an adapter"
            )
        self.ema_decay = train_opt.get("ema_decay", 0)
        if self.ema_decay > 0:
            self.net_g_ema = build_network(copy.deepcopy(self.opt["network_g"])).to(self.device)
            self.model_ema(0)
            self.net_g_ema.eval()
        self.cri_pix = build_loss(copy.deepcopy(train_opt["pixel_opt"])).to(self.device)
        uses_feature = any("feature" in stage.losses for stage in self.stages)
        self.cri_feat = build_loss(copy.deepcopy(train_opt["feature_opt"])).to(self.device) if uses_feature else None
        self.net_t.eval()

    # ----------------------------------------------------------------------------------- stages
    @property
    def stage(self) -> Stage | None:
        """The active stage (None before training starts and when testing)."""
        return None if self.stage_index is None else self.stages[self.stage_index]

    def validation_record(self) -> dict[str, Any]:
        """The stage a validation ran in, for ``validation.jsonl``."""
        return {"stage": self.stage.name} if self.stage is not None else {}

    def _stage_index_for(self, current_iter: int) -> int:
        for index, stage in enumerate(self.stages):
            if current_iter <= stage.last:
                return index
        return len(self.stages) - 1

    def _trainable(self, branch: str) -> list[nn.Parameter]:
        bare_g = self.get_bare_model(self.net_g)
        if branch == "teacher":
            return list(self.get_bare_model(self.net_t).parameters())
        if branch == "teacher_encoder":
            return list(part_parameters(self.get_bare_model(self.net_t), "encoder"))
        return list(bare_g.branch_parameters(branch))

    def _enter_stage(self, index: int, resuming: bool = False) -> None:
        """Freeze all, unfreeze the stage's branches, re-wrap, and build fresh optimizers.

        With ``ren_init: main``, the stage that first trains the residual encoder starts it as a copy of
        the main encoder as trained so far (not when ``resuming`` inside that stage: the state holds it,
        nor when an ERLNet checkpoint loaded it).
        """
        stage = self.stages[index]
        bare_g, bare_t = self.get_bare_model(self.net_g), self.get_bare_model(self.net_t)
        first_residual = "residual_encoder" in stage.train and not any(
            "residual_encoder" in earlier.train for earlier in self.stages[:index]
        )
        if first_residual and not resuming and bare_g.ren_init == "main" and not self.keep_loaded_residual:
            bare_g.copy_main_encoder_to_residual()
            get_root_logger().info(f"Stage {stage.name!r}: the residual encoder starts as a copy of the main encoder")
        if stage.trains_teacher and not resuming and self.opt["train"].get("teacher_init", "random") == "main":
            bare_t.load_state_dict(bare_g.backbone.state_dict())
            get_root_logger().info(f"Stage {stage.name!r}: the teacher starts as a copy of the deraining backbone")
        for param in (*bare_g.parameters(), *bare_t.parameters()):
            param.requires_grad_(False)
            param.grad = None
        trainable = [param for branch in stage.train for param in self._trainable(branch)]
        for param in trainable:
            param.requires_grad_(True)
        self.net_g, self.net_t, self.net_aligned = bare_g, bare_t, None
        if stage.trains_teacher:
            bare_t.train()
            if "teacher_encoder" in stage.train:
                self.net_aligned = self.model_to_device(AlignedTeacher(bare_t, bare_g.backbone))
            else:
                self.net_t = self.model_to_device(bare_t)
        else:
            bare_t.eval()
            self.net_g = self.model_to_device(bare_g)
        bare_g.train()
        optim_opt, scheduler_opt = stage_training_options(self.opt["train"], stage)
        optim_type = optim_opt.pop("type")
        self.optimizer_g = self.get_optimizer(optim_type, trainable, **optim_opt)
        self.optimizers = [self.optimizer_g]
        self.schedulers = [build_scheduler(self.optimizer_g, scheduler_opt, f"stage {stage.name!r}")]
        self.stage_index = index
        if "feature" in stage.losses and not resuming and not any("feature" in s.losses for s in self.stages[:index]):
            headroom = self._report_headroom()
            if self.opt["train"].get("balance_feature_loss", False):
                self._set_feature_weight(headroom.balanced_lambda if headroom is not None else None)
        get_root_logger().info(
            f"Stage {index + 1}/{len(self.stages)} {stage.name!r}, iterations {stage.first}-{stage.last}: "
            f"training {', '.join(stage.train)} ({sum(p.numel() for p in trainable):,} parameters) "
            f"with {' + '.join(stage.losses)} loss{'es' if len(stage.losses) > 1 else ''}"
        )

    @master_only
    def _report_headroom(self) -> Headroom | None:
        """Log the entanglement headroom (:mod:`erl_plugin.models.headroom`) on the first validation set
        (at most :data:`HEADROOM_IMAGES` images) and write it to ``<experiment>/headroom.json``."""
        bare_g, bare_t = self.get_bare_model(self.net_g), self.get_bare_model(self.net_t)
        phase = first_validation_phase(self.opt)
        logger = get_root_logger()
        if phase is None or bare_g.hooked:
            why = (
                "no validation set" if phase is None else "a backbone entangled through entangle_at has no decode call"
            )
            logger.info(f"Headroom not measured: {why}")
            return None
        dataset = build_dataset(copy.deepcopy(self.opt["datasets"][phase]))
        pairs = (
            (item["lq"][None].to(self.device), item["gt"][None].to(self.device))
            for item in itertools.islice((dataset[i] for i in range(len(dataset))), HEADROOM_IMAGES)
        )
        aligned = self.opt["train"].get("teacher_mode", "independent") == "aligned"
        losses = (self.cri_pix, self.cri_feat)
        headroom = measure_headroom(bare_g, bare_t, pairs, aligned, dataset.opt.get("name", phase), losses)
        logger.info(headroom.report())
        root = self.opt["path"].get("experiments_root")
        if root:
            write_text(os.path.join(root, "headroom.json"), json.dumps(headroom.as_dict(), indent=1) + "\n")
        return headroom

    def _set_feature_weight(self, measured: float | None) -> None:
        """``train.balance_feature_loss``: λ_fre becomes the weight at which the feature loss's gradient on the
        residual encoder equals the pixel loss's, as rank 0 measured it (every rank takes rank 0's)."""
        value = torch.tensor([measured if measured is not None else float("nan")], dtype=torch.float64)
        if self.opt["dist"]:
            value = value.to(self.device)
            torch.distributed.broadcast(value, 0)
        weight = float(value.item())
        if not weight > 0:  # nan: no validation image to measure on; 0: no gradient
            raise ValueError(f"train.balance_feature_loss: the gradients could not be measured (λ_fre {weight})")
        get_root_logger().info(
            f"train.balance_feature_loss: λ_fre {self.cri_feat.loss_weight:g} -> {weight:.4g} (equal pixel and feature "
            "gradients on the residual encoder)"
        )
        self.cri_feat.loss_weight = weight

    @master_only
    def _save_stage_end(self, stage: Stage) -> None:
        models = self.opt["path"]["models"]
        if stage.trains_teacher:
            self.save_network(self.net_t, "net_t", "teacher")
            return
        self.save_network(self.net_g, "net_g", stage.name)
        if not stage.entangled:
            bare_g = self.get_bare_model(self.net_g)
            backbone = bare_g.backbone_options["type"].lower()
            atomic_save({"params": bare_g.backbone_state_dict()}, os.path.join(models, f"{backbone}_{stage.name}.pth"))

    def _ensure_stage(self, current_iter: int) -> None:
        index = self._stage_index_for(current_iter)
        if index == self.stage_index:
            return
        if self.stage_index is not None:
            self._save_stage_end(self.stages[self.stage_index])
        self._enter_stage(index)

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """Switch stage when ``current_iter`` enters a new one; schedules count from its start."""
        self._ensure_stage(current_iter)
        super().update_learning_rate(current_iter - self.stage.first + 1, warmup_iter)

    # --------------------------------------------------------------------------------- training
    def _teacher_targets(self, gt: Tensor) -> list[Tensor]:
        teacher = self.get_bare_model(self.net_t)
        with torch.no_grad():
            bottleneck, skips = teacher.encode(gt)
        points = [*skips, bottleneck]
        return [points[i] for i in self.get_bare_model(self.net_g).entangled_points]

    def optimize_parameters(self, current_iter: int) -> None:
        stage = self.stage
        self.optimizer_g.zero_grad()
        loss_dict: OrderedDict[str, Tensor] = OrderedDict()
        # Networks (the teacher's targets included) under train.amp; losses on outputs cast to fp32.
        with self.train_autocast():
            if stage.trains_teacher:
                net = self.net_aligned if self.net_aligned is not None else self.net_t
                self.output = net(self.gt).float()
                loss_dict["l_teacher"] = self.cri_pix(self.output, self.gt)
            elif "feature" in stage.losses:
                output, features = self.net_g(self.lq, return_features=True)
                self.output = output.float()
                loss_dict["l_pix"] = self.cri_pix(self.output, self.gt)
                targets = self._teacher_targets(self.gt)
                loss_dict["l_fre"] = self.cri_feat([f.float() for f in features], [t.float() for t in targets])
            else:
                self.output = self.net_g(self.lq, entangled=stage.entangled).float()
                loss_dict["l_pix"] = self.cri_pix(self.output, self.gt)
        self.log_dict = self.reduce_loss_dict(loss_dict)
        where = f"stage {stage.name!r}, iteration {current_iter}"
        if not self.nonfinite_guard.check(loss_dict, where, get_root_logger()):
            return
        self.backward_step(sum(loss_dict.values()))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self) -> None:
        """Derain ``self.lq`` as the active stage does (all of ERL-Net when testing); during a teacher
        stage, validation scores the teacher instead: the clean image in, the clean image out."""
        net: nn.Module = self.net_g_ema if hasattr(self, "net_g_ema") else self.get_bare_model(self.net_g)
        source, options = self.lq, {"entangled": self.stage is None or self.stage.entangled}
        if self.stage is not None and self.stage.trains_teacher and hasattr(self, "gt"):
            bare_t = self.get_bare_model(self.net_t)
            aligned = "teacher_encoder" in self.stage.train
            net = AlignedTeacher(bare_t, self.get_bare_model(self.net_g).backbone) if aligned else bare_t
            source, options = self.gt, {}
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(self.device, self.test_dtype):
            self.output = net(source, **options).float()
        net.train(was_training)

    # -------------------------------------------------------------------------- save and resume
    def save(self, epoch: int, current_iter: int) -> None:
        """Networks and training state; nothing while non-finite steps are being skipped (keep the last good)."""
        if self.skips_saving(current_iter):
            return
        if hasattr(self, "net_g_ema"):
            self.save_network([self.net_g, self.net_g_ema], "net_g", current_iter, param_key=["params", "params_ema"])
        else:
            self.save_network(self.net_g, "net_g", current_iter)
        self.save_network(self.net_t, "net_t", current_iter)
        self.save_training_state(epoch, current_iter)
        self.after_save(epoch, current_iter)

    def training_state_extras(self) -> dict[str, Any]:
        """DerainModel's extras plus the stage plan, the active stage and λ_fre (which a balance may have set)."""
        feature = {"feature_weight": self.cri_feat.loss_weight} if self.cri_feat is not None else {}
        return {
            **super().training_state_extras(),
            "stage": self.stage_index,
            "stages": _stage_plan(self.stages),
            **feature,
        }

    @staticmethod
    def check_options(opt: Mapping[str, Any], networks: Mapping[str, nn.Module], is_train: bool) -> None:
        """ERLNet as network_g, a pretrained teacher that fits, the stages, a teacher whose target means
        something, and every stage's optimizer and scheduler (see :meth:`DerainModel.check_options`).

        Raises:
            ValueError: naming the key.
        """
        if opt["network_g"]["type"] != "ERLNet":
            raise ValueError(f"network_g.type: ERLModel trains ERLNet, got {opt['network_g']['type']!r}")
        teacher = networks["network_g"].new_backbone()  # smaller than network_g, which passed the size check
        what = f"the teacher ({networks['network_g'].backbone_options['type']})"
        check_pretrained_fits(teacher, opt.get("path") or {}, "t", what)
        if not is_train:
            return
        stages = parse_stages(opt)
        if any("feature" in stage.losses for stage in stages) and getattr(teacher, "global_residual", False):
            raise ValueError(
                "network_g.backbone.global_residual: true, and a stage uses the feature loss: a clean-to-clean "
                "teacher that adds its input back learns the identity, so the embedding of a clean image tells the "
                "decoder there is no rain to remove and the feature loss pulls the wrong way (docs/study.md, the "
                "headroom table). Use global_residual: false (direct image output), or train without the feature loss"
            )
        check_optimizers(opt, stages)

    @staticmethod
    def check_resume_state(opt: dict[str, Any], state: dict[str, Any], path: str) -> None:
        """Refuse, before anything is written, a state without a stage or from another stage plan.

        Called by :func:`erl_plugin.utils.resume.load_resume_state`.
        """
        if state.get("stage") is None or state.get("stages") is None:
            raise ResumeError(
                f"{path}: the training state records no stage (keys: {', '.join(sorted(state))}); an ERLModel run "
                "resumes only from states written by ERLModel"
            )
        stages = parse_stages(opt)
        plan = _stage_plan(stages)
        if state["stages"] != plan:
            raise ResumeError(
                f"{path}: written for the stages {_describe(state['stages'])}, but the options "
                f"(train.strategy {opt['train'].get('strategy')!r}) give {_describe(plan)}; resume with the options "
                "that wrote it, or train under a new name"
            )
        stage = stages[state["stage"]]
        if not stage.first - 1 <= state["iter"] <= stage.last:
            raise ResumeError(
                f"{path}: iteration {state['iter']} lies outside its stage {stage.name!r} "
                f"(iterations {stage.first}-{stage.last} under these options: train.stage_iters changed)"
            )

    def resume_training(self, resume_state: dict[str, Any]) -> None:
        """Restore the stage, the teacher (and EMA), and the stage's optimizers and schedulers."""
        models = self.opt["path"]["models"]
        teacher_path = os.path.join(models, f"net_t_{resume_state['iter']}.pth")
        self.load_network(self.get_bare_model(self.net_t), teacher_path, True, "params")
        if hasattr(self, "net_g_ema"):
            ema_path = os.path.join(models, f"net_g_{resume_state['iter']}.pth")
            self.load_network(self.net_g_ema, ema_path, True, "params_ema")
        self._enter_stage(resume_state["stage"], resuming=True)
        if self.cri_feat is not None and "feature_weight" in resume_state:
            self.cri_feat.loss_weight = float(resume_state["feature_weight"])
        super().resume_training(resume_state)


def _stage_plan(stages: list[Stage]) -> list[dict[str, Any]]:
    """What a training state records of the stages: names, branches trained, losses."""
    return [{"name": s.name, "train": list(s.train), "losses": list(s.losses)} for s in stages]


def _describe(plan: list[Any]) -> str:
    """Stages as ``name (branches; losses)``; older states recorded names only."""
    return ", ".join(
        f"{s['name']} ({'+'.join(s['train'])}; {'+'.join(s['losses'])})" if isinstance(s, dict) else str(s)
        for s in plan
    )
