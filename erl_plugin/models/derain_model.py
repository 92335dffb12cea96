"""DerainModel: BasicSR's ``SRModel`` with mixed precision, channels_last and ``torch.compile``.

BasicSR 1.4.2 trains and tests in fp32 only. This model reads the options of
:mod:`erl_plugin.utils.speed` (``train.amp``, ``val.amp``, ``channels_last``, ``compile``) and otherwise
behaves as ``SRModel``: with none of them set it computes exactly what ``SRModel`` computes. It
trains any single network (``model_type: DerainModel``, e.g. MEMD); ERLModel builds on it.

Checkpoints, training states and validation come from :class:`~erl_plugin.models.reliable.ReliableTraining`.
The forward pass runs under autocast, the losses in fp32 on the output cast back to fp32; fp16
scales the loss with a GradScaler (bf16 needs none), whose scale is part of the training state.
Networks are converted and compiled before they are DDP-wrapped, in place, so checkpoints keep
plain parameter names. A step whose loss is NaN or infinite is skipped
(:mod:`erl_plugin.models.nonfinite`), and no checkpoint is written while steps are being skipped.
Schedules come from :mod:`erl_plugin.models.schedulers`: BasicSR's, and ``PlateauLR``, which follows
validation and may end training at a plateau (the latest networks are written, and a resumed run
reaches the same stop).
"""

import copy
import datetime
import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

import torch
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import Tensor, nn

from erl_plugin.models.nonfinite import DEFAULT_LIMIT, NonFiniteGuard
from erl_plugin.models.reliable import ReliableTraining
from erl_plugin.models.schedulers import STOP_EVENT, PlateauLR, PlateauReached, build_scheduler
from erl_plugin.models.stages import check_optimizers
from erl_plugin.models.validation import first_validation_phase
from erl_plugin.utils.speed import autocast, check_compile, memory_format, prepare_network, resolve_precision


@MODEL_REGISTRY.register()
class DerainModel(ReliableTraining, SRModel):
    """``SRModel`` with :class:`ReliableTraining` and the speed options of :mod:`erl_plugin.utils.speed`; see the
    module docstring."""

    @staticmethod
    def check_options(opt: Mapping[str, Any], networks: Mapping[str, nn.Module], is_train: bool) -> None:
        """What this model reads beyond the shared sections, checked before anything is built
        (:func:`erl_plugin.engine.options.validate_options` calls it with the networks it built).

        Raises:
            ValueError: naming the key.
        """
        if is_train:
            check_optimizers(opt)

    @cached_property
    def train_dtype(self) -> torch.dtype | None:
        """Autocast dtype of training steps (``train.amp``), after the device's fallbacks."""
        return resolve_precision((self.opt.get("train") or {}).get("amp", "none"), self.device, "train.amp")

    @cached_property
    def test_dtype(self) -> torch.dtype | None:
        """Autocast dtype of validation and testing (``val.amp``), after the device's fallbacks."""
        return resolve_precision((self.opt.get("val") or {}).get("amp", "none"), self.device, "val.amp")

    @property
    def channels_last(self) -> bool:
        """Whether networks and batches use channels_last memory order."""
        return bool(self.opt.get("channels_last", False))

    @cached_property
    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 training; a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.train_dtype is torch.float16)

    @cached_property
    def compile_options(self) -> dict[str, Any] | None:
        """``torch.compile`` arguments from the ``compile`` option (None: off); logs the settings once."""
        options = check_compile(self.opt.get("compile"))
        names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        get_root_logger().info(
            f"Speed on {self.device}: train.amp {names.get(self.train_dtype, 'none (fp32)')}, "
            f"val.amp {names.get(self.test_dtype, 'none (fp32)')}, channels_last {self.channels_last}, "
            f"compile {options if options is not None else 'off'}"
        )
        return options

    def prepare_network(self, net: nn.Module) -> nn.Module:
        """Move ``net`` to the device in the configured memory format, compiled when asked."""
        return prepare_network(net, self.device, self.channels_last, self.compile_options)

    def model_to_device(self, net: nn.Module) -> nn.Module:
        """Prepare ``net`` (memory format, compile), then move and wrap it as BasicSR does."""
        return super().model_to_device(self.prepare_network(net))

    def train_autocast(self) -> AbstractContextManager:
        """The autocast context of a training forward pass."""
        return autocast(self.device, self.train_dtype)

    def feed_data(self, data: dict[str, Tensor]) -> None:
        super().feed_data(data)
        self.lq = memory_format(self.lq, self.channels_last)
        if hasattr(self, "gt"):
            self.gt = memory_format(self.gt, self.channels_last)

    def setup_schedulers(self) -> None:
        """The schedulers of :mod:`erl_plugin.models.schedulers`, from a copy of ``train.scheduler``."""
        scheduler_opt = copy.deepcopy(self.opt["train"]["scheduler"])
        self.schedulers = [build_scheduler(optimizer, scheduler_opt, "train") for optimizer in self.optimizers]

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """BasicSR's update; a run resumed after its plateau stop ends here, before training more."""
        if not hasattr(self, "_started"):
            self._started = time.time()
        stopped = self.plateau_stop()
        if stopped is not None:
            self._end_training(f"the run had stopped: {stopped}")
        super().update_learning_rate(current_iter, warmup_iter)

    # ------------------------------------------------------------------------ plateau schedule
    def plateau_schedule(self) -> PlateauLR | None:
        """The active ``PlateauLR``, if the run (or ERLModel's stage) uses one."""
        return next((s for s in getattr(self, "schedulers", []) if isinstance(s, PlateauLR)), None)

    def plateau_stop(self) -> str | None:
        """What the plateau stop recorded, once it has fired."""
        schedule = self.plateau_schedule()
        if schedule is None or schedule.stopped_at is None:
            return None
        return schedule.events[-1]["event"] if schedule.events else f"{STOP_EVENT} at {schedule.stopped_at}"

    @cached_property
    def plateau_dataset(self) -> str | None:
        """The validation set that drives ``PlateauLR``: the first ``datasets.val*``."""
        phase = first_validation_phase(self.opt)
        return self.opt["datasets"][phase].get("name") if phase is not None else None

    def validation(self, dataloader: Any, current_iter: int, tb_logger: Any, save_img: bool = False) -> None:
        """BasicSR's validation, then the plateau schedule's turn and the ``validation.jsonl`` line."""
        self._validation_record: dict[str, Any] | None = None
        super().validation(dataloader, current_iter, tb_logger, save_img)
        schedule = self.plateau_schedule()
        event = None
        training = self.is_train and current_iter <= self.opt["train"]["total_iter"]
        if schedule is not None and training and dataloader.dataset.opt.get("name") == self.plateau_dataset:
            event = schedule.observe(self.metric_results[schedule.metric], current_iter)
        if event is not None:
            get_root_logger().info(f"PlateauLR: {event}")
            last = getattr(self, "_last_save", None)
            if last is not None and last[1] == current_iter:
                # BasicSR saved before validating: the state must hold what this validation changed,
                # or a run resumed from it would miss the reduction (or the stop).
                self.save(*last)
        record = self._validation_record
        if record is not None:
            record.update({"lr": self.get_current_learning_rate()[0]} if self.is_train else {})
            record.update({"event": event} if event is not None else {})
            with open(os.path.join(self.opt["path"]["experiments_root"], "validation.jsonl"), "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if schedule is not None and schedule.stopped_at == current_iter:
            self._end_training(event)

    def _end_training(self, reason: str | None) -> None:
        """Write the latest networks, log the end as BasicSR does, and raise :class:`PlateauReached`.

        A run resumed from an earlier state trains the same batches to the same stop.
        """
        self.save(-1, -1)
        consumed = datetime.timedelta(seconds=int(time.time() - getattr(self, "_started", time.time())))
        get_root_logger().info(f"End of training ({reason}). Time consumed: {consumed}")
        raise PlateauReached(reason)

    @cached_property
    def nonfinite_guard(self) -> NonFiniteGuard:
        """Skips non-finite steps; stops training after ``train.max_consecutive_nonfinite`` in a row."""
        limit = (self.opt.get("train") or {}).get("max_consecutive_nonfinite", DEFAULT_LIMIT)
        return NonFiniteGuard(limit, distributed=self.opt["dist"])

    def backward_step(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` and step ``optimizer_g``, through the GradScaler for fp16."""
        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.step(self.optimizer_g)
        self.grad_scaler.update()

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        with self.train_autocast():
            output = self.net_g(self.lq)
        self.output = output.float()
        loss_dict: OrderedDict[str, Tensor] = OrderedDict()
        if self.cri_pix:
            loss_dict["l_pix"] = self.cri_pix(self.output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            if l_percep is not None:
                loss_dict["l_percep"] = l_percep
            if l_style is not None:
                loss_dict["l_style"] = l_style
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if not self.nonfinite_guard.check(loss_dict, f"iteration {current_iter}", get_root_logger()):
            return
        self.backward_step(sum(loss_dict.values()))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self) -> None:
        """SRModel's test under ``val.amp``; the output is fp32."""
        with autocast(self.device, self.test_dtype):
            super().test()
        self.output = self.output.float()

    def validation_record(self) -> dict[str, Any]:
        """What a line of ``validation.jsonl`` adds to the iteration, dataset and metrics (ERLModel: the stage)."""
        return {}

    def _log_validation_metric_values(self, current_iter: int, dataset_name: str, tb_logger: Any) -> None:
        """BasicSR's log lines, plus one JSON line in ``<experiment>/validation.jsonl`` during training.

        The file holds the validation history that the log states only in prose: ``{"iter", "dataset",
        "metrics": {name: value}, "lr"}`` per validation, with ``"event"`` where the plateau schedule acted
        (a resumed run appends; readers keep the last line per iteration and dataset). :meth:`validation`
        writes the line, after the schedule's turn.
        """
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        root = self.opt["path"].get("experiments_root")
        if not self.is_train or not root or self.opt.get("rank", 0) != 0:
            return
        self._validation_record = {
            "iter": int(current_iter),
            "dataset": dataset_name,
            "metrics": {name: float(value) for name, value in self.metric_results.items()},
            **self.validation_record(),
        }

    # -------------------------------------------------------------------------- save and resume
    def skips_saving(self, current_iter: int) -> bool:
        """True (and logged) while non-finite steps are being skipped: the last good checkpoint stays newest."""
        streak = self.nonfinite_guard.streak
        if streak:
            get_root_logger().warning(f"Iteration {current_iter}: not saving during {streak} non-finite steps in a row")
        return bool(streak)

    def save(self, epoch: int, current_iter: int) -> None:
        """SRModel's save, skipped while non-finite steps are being skipped."""
        if not self.skips_saving(current_iter):
            super().save(epoch, current_iter)
            self.after_save(epoch, current_iter)

    def after_save(self, epoch: int, current_iter: int) -> None:
        """Remember the last checkpoint (a schedule change at its iteration writes it again)."""
        if current_iter != -1:
            self._last_save = (epoch, current_iter)

    def training_state_extras(self) -> dict[str, Any]:
        """What this model adds to the training state of :mod:`erl_plugin.utils.resume`: the fp16 loss scale."""
        return {"grad_scaler": self.grad_scaler.state_dict()} if self.grad_scaler.is_enabled() else {}

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """The training state of :class:`ReliableTraining`; the non-finite guard's way back starts there."""
        super().save_training_state(epoch, current_iter)
        if current_iter != -1:
            self.nonfinite_guard.last_checkpoint = os.path.join(
                self.opt["path"]["training_states"], f"{current_iter}.state"
            )

    def resume_training(self, resume_state: dict[str, Any]) -> None:
        """BasicSR's resume (optimizers, schedulers), then the fp16 loss scale where it was saved."""
        super().resume_training(resume_state)
        if self.grad_scaler.is_enabled() and "grad_scaler" in resume_state:
            self.grad_scaler.load_state_dict(resume_state["grad_scaler"])
