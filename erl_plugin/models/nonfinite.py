"""Skipping training steps whose loss is NaN or infinite, and stopping when they do not end.

Option ``train.max_consecutive_nonfinite`` (default :data:`DEFAULT_LIMIT`): after that many
non-finite steps in a row, training stops with :class:`NonFiniteLossError`. Under DDP the ranks
agree (one all-reduce of a flag) before any backward pass, so they skip the same steps.
"""

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

DEFAULT_LIMIT = 5


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive non-finite losses; names stage and iteration."""


class NonFiniteGuard:
    """Counts consecutive non-finite losses and decides whether a step may run.

    Args:
        limit: Non-finite steps in a row that stop training.
        distributed: Whether to agree with the other ranks (``torch.distributed`` initialised).
    """

    def __init__(self, limit: int = DEFAULT_LIMIT, distributed: bool = False) -> None:
        self.limit = limit
        self.distributed = distributed
        self.streak = 0
        self.last_checkpoint: str | None = None
        """The newest training state written, named when training stops."""

    def check(self, losses: Mapping[str, Tensor], where: str, logger: Any) -> bool:
        """True when every loss is finite on every rank; otherwise log, count, and maybe stop.

        Args:
            losses: The step's losses by name.
            where: Stage and iteration, for messages.
            logger: Where skipped steps are reported.

        Raises:
            NonFiniteLossError: at the ``limit``-th non-finite step in a row.
        """
        finite = torch.stack([loss.detach().float() for loss in losses.values()]).isfinite().all().float()
        if self.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 1.0:
            self.streak = 0
            return True
        self.streak += 1
        values = ", ".join(f"{name}={loss.item():.4g}" for name, loss in losses.items())
        if self.streak >= self.limit:
            raise NonFiniteLossError(
                f"{where}: {self.streak} consecutive non-finite losses (train.max_consecutive_nonfinite = "
                f"{self.limit}; last: {values}); training stopped; the last good checkpoint: "
                f"{self.last_checkpoint or 'none written yet'}"
            )
        logger.warning(
            f"{where}: non-finite loss ({values}) here or on another rank: step skipped ({self.streak} in a row)"
        )
        return False
