"""Learning-rate schedules of DerainModel and ERLModel: BasicSR's, and one driven by validation.

``PlateauLR`` is the paper's "learning rate divided by 10 on plateau": it watches a validation
metric (higher is better, e.g. ``psnr_basicsr``) and divides the learning rate by ``1 / factor``
when the metric has not gained ``min_gain`` over its best for ``patience`` iterations, at most
``max_reductions`` times. With ``stop: true``, a plateau at the last learning rate ends training
("plateau reached"): the run saves its networks, records the iteration, and exits normally; a
resumed run that had stopped stops again at once. Options, as any BasicSR scheduler::

    scheduler:
      type: PlateauLR
      metric: psnr_basicsr   # a key of val.metrics, on the first validation set
      factor: 0.1            # learning rate x factor on a plateau
      patience: 4000         # iterations without a gain of min_gain (scaled with the run's iterations)
      min_gain: 0.05         # in the metric's unit (dB for PSNR)
      max_reductions: 2      # lr, lr/10, lr/100
      stop: true             # a plateau at the last learning rate ends training

BasicSR calls ``step()`` every iteration; this schedule moves only when the model reports a
validation (:meth:`PlateauLR.observe`), on every rank alike, so DDP ranks keep equal rates.
"""

from collections.abc import Mapping
from typing import Any

import torch
from basicsr.models import lr_scheduler

from erl_plugin.models.validation import first_validation_phase

STOP_EVENT = "plateau reached"
"""How the event of a plateau stop begins (in the log, ``validation.jsonl`` and the training state)."""


class PlateauReached(Exception):
    """Training ended by ``PlateauLR``'s stopping rule; the message says where (not an error)."""


class PlateauLR:
    """Divide the learning rate on a validation plateau; optionally stop at the last one.

    Args:
        optimizer: The optimizer whose ``lr`` this schedule sets.
        metric: Name of the validation metric (a key of ``val.metrics``); higher is better.
        factor: Multiplier of the learning rate at a plateau, in (0, 1). Default: 0.1.
        patience: Iterations without a gain of ``min_gain`` over the best value that make a plateau.
        min_gain: The gain (metric units) that counts as progress. Default: 0.05.
        max_reductions: How many times the learning rate may be reduced. Default: 2.
        stop: Whether a plateau at the last learning rate ends training. Default: False.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        metric: str = "psnr_basicsr",
        factor: float = 0.1,
        patience: int = 4000,
        min_gain: float = 0.05,
        max_reductions: int = 2,
        stop: bool = False,
    ) -> None:
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric: {metric!r} must name a validation metric (a key of val.metrics)")
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor < 1:
            raise ValueError(f"factor: {factor!r} must be a number in (0, 1)")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: {patience!r} must be a positive number of iterations")
        if isinstance(min_gain, bool) or not isinstance(min_gain, int | float) or min_gain < 0:
            raise ValueError(f"min_gain: {min_gain!r} must be a number >= 0")
        if isinstance(max_reductions, bool) or not isinstance(max_reductions, int) or max_reductions < 0:
            raise ValueError(f"max_reductions: {max_reductions!r} must be an integer >= 0")
        if not isinstance(stop, bool):
            raise ValueError(f"stop: {stop!r} must be true or false")
        self.optimizer = optimizer
        self.metric, self.factor, self.patience = metric, float(factor), patience
        self.min_gain, self.max_reductions, self.stop = float(min_gain), max_reductions, stop
        self.best: float | None = None
        self.best_iter = 0
        self.since = 0
        """The iteration the current learning rate started at (the window counts from it or the best)."""
        self.reductions = 0
        self.stopped_at: int | None = None
        self.events: list[dict[str, Any]] = []

    def step(self) -> None:
        """Called by BasicSR every iteration: the rate moves only in :meth:`observe`."""

    def observe(self, value: float, current_iter: int) -> str | None:
        """Take a validation value; returns what changed (a reduction, or the stop), else None."""
        if self.stopped_at is not None:
            return None
        if self.best is None or value >= self.best + self.min_gain:
            self.best, self.best_iter = float(value), current_iter
            return None
        waited = current_iter - max(self.best_iter, self.since)
        if waited < self.patience:
            return None
        reason = f"{self.metric} has not gained {self.min_gain:g} over {self.best:.4f} (iteration {self.best_iter})"
        if self.reductions < self.max_reductions:
            old = self.optimizer.param_groups[0]["lr"]
            for group in self.optimizer.param_groups:
                group["lr"] *= self.factor
            self.reductions += 1
            self.since = current_iter
            event = f"learning rate {old:.3g} -> {old * self.factor:.3g}: {reason} in {waited} iterations"
        elif self.stop:
            self.stopped_at = current_iter
            event = f"{STOP_EVENT} at iteration {current_iter}: {reason} in {waited} iterations at the last rate"
        else:
            return None
        self.events.append({"iter": current_iter, "event": event})
        return event

    def state_dict(self) -> dict[str, Any]:
        """What resume needs: the best value, the window, the reductions made, and a stop."""
        keys = ("best", "best_iter", "since", "reductions", "stopped_at", "events")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


SCHEDULERS = {
    "MultiStepLR": lr_scheduler.MultiStepRestartLR,
    "MultiStepRestartLR": lr_scheduler.MultiStepRestartLR,
    "CosineAnnealingRestartLR": lr_scheduler.CosineAnnealingRestartLR,
    "PlateauLR": PlateauLR,
}


def build_scheduler(optimizer: torch.optim.Optimizer, scheduler_opt: Mapping[str, Any], where: str) -> Any:
    """The scheduler ``scheduler_opt`` names (``type`` + arguments) on ``optimizer``.

    Raises:
        ValueError: naming ``where``, for an unknown type or arguments it does not take.
    """
    arguments = dict(scheduler_opt)
    scheduler_type = arguments.pop("type", None)
    if scheduler_type not in SCHEDULERS:
        raise ValueError(f"{where}: scheduler.type: {scheduler_type!r}; allowed: {', '.join(SCHEDULERS)}")
    try:
        return SCHEDULERS[scheduler_type](optimizer, **arguments)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{where}: scheduler: {error}") from None


def check_plateau_metric(opt: Mapping[str, Any], scheduler_opt: Mapping[str, Any], where: str) -> None:
    """A ``PlateauLR`` needs validation: a validation set, ``val.val_freq`` within ``patience``, and its metric.

    Raises:
        ValueError: naming ``where`` and the missing piece.
    """
    if scheduler_opt.get("type") != "PlateauLR":
        return
    val = opt.get("val") or {}
    metrics = val.get("metrics") or {}
    metric = scheduler_opt.get("metric", "psnr_basicsr")
    if first_validation_phase(opt) is None or not val.get("val_freq"):
        raise ValueError(f"{where}: scheduler PlateauLR follows validation: add datasets.val and val.val_freq")
    if metric not in metrics:
        known = ", ".join(metrics) or "none"
        raise ValueError(f"{where}: scheduler.metric: {metric!r} is not in val.metrics ({known})")
    patience = scheduler_opt.get("patience", 4000)
    if isinstance(patience, int) and patience < val["val_freq"]:
        raise ValueError(
            f"{where}: scheduler.patience: {patience} iterations is shorter than val.val_freq = {val['val_freq']}"
        )
