"""Mixed precision, channels_last memory and ``torch.compile``, for training and for inference.

Options (training and ``erl-test``; :class:`~erl_plugin.models.DerainModel` and ERLModel read them):

.. code-block:: yaml

    channels_last: true           # networks and batches in NHWC memory order
    compile: true                 # or {backend: inductor, mode: max-autotune, dynamic: false, fullgraph: false}
    train:
      amp: bf16                   # bf16 | fp16 (with a GradScaler) | none
    val:
      amp: bf16                   # validation and erl-test; default none

Where a setting cannot work it warns and falls back instead of stopping a run: ``fp16`` needs CUDA
(on the CPU it runs fp32; ``bf16`` autocast works on both), and ``compile`` needs ``torch.compile``
with its backend's toolchain (a C++ compiler for inductor on the CPU, Triton on CUDA). An unknown
precision name or compile key is an error listing the allowed ones.
"""

import os
import platform
import shutil
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "none": None,
}
"""Precision names and their autocast dtypes; ``none`` and ``fp32`` both mean no autocast."""
COMPILE_KEYS = ("backend", "mode", "fullgraph", "dynamic")
"""The ``torch.compile`` arguments that the ``compile`` option may set."""


def check_precision(name: Any, where: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None for fp32).

    Raises:
        ValueError: naming ``where``, the value and the allowed names.
    """
    if not isinstance(name, str) or name not in PRECISIONS:
        raise ValueError(f"{where}: {name!r} is not a precision; allowed: {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def check_compile(value: Any, where: str = "compile") -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from a ``compile`` option; None when it is off.

    ``true`` gives the defaults (inductor); a mapping sets any of :data:`COMPILE_KEYS`.

    Raises:
        ValueError: naming ``where`` for anything else.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {value!r} must be true, false or a mapping of {', '.join(COMPILE_KEYS)}")
    unknown = sorted(set(value) - set(COMPILE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(COMPILE_KEYS)}")
    return dict(value)


def check_speed_options(opt: Mapping[str, Any]) -> None:
    """Check ``train.amp``, ``val.amp``, ``channels_last`` and ``compile`` in an options dict.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    for section in ("train", "val"):
        if "amp" in (opt.get(section) or {}):
            check_precision(opt[section]["amp"], f"{section}.amp")
    if not isinstance(opt.get("channels_last", False), bool):
        raise ValueError(f"channels_last: {opt['channels_last']!r} must be true or false")
    check_compile(opt.get("compile"))


def requested_speed_options(opt: Mapping[str, Any]) -> list[str]:
    """The speed options that ``opt`` turns on (``train.amp``, ``val.amp``, ``channels_last``, ``compile``)."""
    keys = [f"{section}.amp" for section in ("train", "val") if PRECISIONS.get((opt.get(section) or {}).get("amp"))]
    keys += [key for key in ("channels_last", "compile") if opt.get(key)]
    return keys


def resolve_precision(name: str, device: str | torch.device, where: str = "precision") -> torch.dtype | None:
    """The autocast dtype to use for a precision name on a device; None means plain fp32.

    fp16 needs CUDA, bf16 CUDA with bf16 support or the CPU; otherwise this warns and returns None.

    Raises:
        ValueError: If ``name`` is not one of :data:`PRECISIONS`.
    """
    dtype = check_precision(name, where)
    kind = torch.device(device).type
    if dtype is torch.float16 and kind != "cuda":
        warnings.warn(f"{where}: fp16 needs CUDA; running fp32 on {device}", RuntimeWarning, stacklevel=2)
        return None
    if dtype is torch.bfloat16 and kind == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn(f"{where}: this GPU has no bf16; running fp32", RuntimeWarning, stacklevel=2)
        return None
    if dtype is not None and kind not in ("cuda", "cpu"):
        warnings.warn(f"{where}: no autocast on {device}; running fp32", RuntimeWarning, stacklevel=2)
        return None
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for a dtype from :func:`resolve_precision`, or nothing for fp32."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def compile_unavailable(device: str | torch.device, backend: str = "inductor") -> str | None:
    """Why ``torch.compile`` with ``backend`` cannot run on ``device``; None when it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    from torch import _dynamo  # imported lazily by torch itself

    if not _dynamo.is_dynamo_supported():
        return f"torch.compile does not support this Python or platform (torch {torch.__version__})"
    if backend != "inductor":
        return None
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "inductor on CUDA needs Triton, which is not installed"
    compilers = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    if not any(shutil.which(compiler) for compiler in compilers):
        return f"inductor on the CPU needs a C++ compiler ({', '.join(compilers)}); none found"
    return None


def prepare_network(
    net: nn.Module, device: torch.device, channels_last: bool, compile_options: Mapping[str, Any] | None
) -> nn.Module:
    """Move ``net`` to ``device``, optionally into channels_last order, and compile it in place.

    Compiling uses ``nn.Module.compile``, so the module keeps its class, its state dict keys and its
    methods (``encode``/``decode`` stay eager; ``forward`` is compiled). A network compiled before is
    left as it is. Where compiling is unavailable (:func:`compile_unavailable`) this warns and runs
    eagerly.

    Returns:
        ``net`` itself.
    """
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if compile_options is None or getattr(net, "_compiled_call_impl", None) is not None:
        return net
    reason = compile_unavailable(device, compile_options.get("backend", "inductor"))
    if reason is not None:
        warnings.warn(f"compile: {reason}; running {type(net).__name__} eagerly", RuntimeWarning, stacklevel=2)
        return net
    net.compile(**compile_options)
    return net


def memory_format(x: Tensor, channels_last: bool) -> Tensor:
    """``x`` in channels_last order when asked and 4-D, else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def device_name(device: torch.device) -> str:
    """The card's name on CUDA, the processor otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
