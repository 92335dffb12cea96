"""The keys a dataset section may hold: its own and those BasicSR reads or adds to every section.

A misspelt key (``gt_szie``) would otherwise be ignored and training would run on other settings than
the ones written; :func:`check_keys` refuses it, naming close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

__all__ = ["BASICSR_KEYS", "check_keys"]

BASICSR_KEYS = frozenset(
    {
        "name",
        "type",
        "phase",
        "scale",
        "batch_size_per_gpu",
        "num_worker_per_gpu",
        "dataset_enlarge_ratio",
        "prefetch_mode",
        "pin_memory",
        "persistent_workers",
        "use_shuffle",
        "num_prefetch_queue",
    }
)
"""Keys BasicSR's dataloader and options parser read from, or add to, every dataset section."""


def check_keys(dataset: str, opt: Mapping[str, Any], own: Mapping[str, str]) -> None:
    """Refuse keys of ``opt`` that neither ``dataset`` (``own``: key -> meaning) nor BasicSR reads.

    Raises:
        ValueError: Naming each unknown key, its close matches, and the allowed keys.
    """
    allowed = set(own) | BASICSR_KEYS
    unknown = sorted(set(opt) - allowed)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(allowed), n=2, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    listing = ", ".join(f"{key} ({meaning})" for key, meaning in own.items())
    raise ValueError(f"{dataset}: unknown option(s) {', '.join(hints)}; allowed: {listing}, and BasicSR's loader keys")
