"""Checkpoint files that a kill cannot leave half-written, and loading that cannot run code.

:func:`atomic_save` writes through :func:`erl_plugin.utils.outputs.write_file` (a fsynced temporary
file renamed into place, never through a link): a reader sees the old file or the new one, never a
partial one. It returns the SHA-256 of the bytes written, which training states record so that resume
can check the network files they point to. :func:`safe_load` is the one way the plugin reads a
``.pth`` or ``.state`` file: ``torch.load(weights_only=True)`` with a short allow-list, and a
:class:`CheckpointError` naming the file when it is truncated, corrupt, needs arbitrary unpickling,
or holds a NaN or infinite weight (every network, training state and pretrained file is loaded
through it, so no tool and no training run starts from such weights).
"""

import collections
import hashlib
import io
import os
import pickle
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from erl_plugin.utils.outputs import write_file

SAFE_GLOBALS: tuple[type, ...] = (collections.Counter,)
"""Types beyond torch's own weights-only set that training states hold (``MultiStepRestartLR`` milestones)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or not plain weights."""


def atomic_save(obj: Any, path: str) -> str:
    """``torch.save`` ``obj`` to ``path`` through :func:`write_file`; return the SHA-256 of the bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_file(path, buffer.getbuffer())


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _allow_safe_globals() -> Iterator[None]:
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch 2.4 has only the process-wide list
        torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
        yield
        return
    with safe_globals(list(SAFE_GLOBALS)):
        yield


def safe_load(path: str, what: str = "checkpoint", *, lazy: bool = False) -> Any:
    """Load ``path`` on the CPU with ``weights_only=True``.

    Args:
        path: A ``.pth`` or ``.state`` file.
        what: What the file is, for messages.
        lazy: Map the tensors from the file instead of reading them, and skip the finiteness check: for
            reading a state's small entries (its ``files``) without touching its weights.

    Raises:
        CheckpointError: naming the file, when it is missing, truncated or corrupt, holds objects
            that only arbitrary unpickling could rebuild (such files are refused, never executed), or
            holds a floating-point tensor with a NaN or infinite value (named by its key).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        with _allow_safe_globals():
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        if "Weights only load failed" in str(error) or "Unsupported global" in str(error):
            raise CheckpointError(
                f"{what} {path}: refused: it holds objects that only arbitrary unpickling can rebuild, which "
                f"could run code ({first.strip()}); save plain tensors (state_dict()) instead"
            ) from None
        raise CheckpointError(f"{what} {path}: corrupt ({first.strip()})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{what} {path}: truncated or corrupt ({type(error).__name__}: {error})") from None
    bad = None if lazy else first_nonfinite(loaded)
    if bad is not None:
        key, tensor = bad
        nan = int(torch.isnan(tensor).sum())
        raise CheckpointError(
            f"{what} {path}: tensor {key} holds {nan} NaN and {int((~torch.isfinite(tensor)).sum()) - nan} infinite "
            f"value(s) of {tensor.numel()}: the weights are unusable (training diverged, or the file was damaged); "
            "use an earlier checkpoint"
        )
    return loaded


def first_nonfinite(tree: Any, prefix: str = "") -> tuple[str, torch.Tensor] | None:
    """The first floating-point (or complex) tensor in ``tree`` holding a NaN or an infinity, with its key.

    Mappings, lists and tuples are searched in order; the key joins the keys and indices on the way
    with ``.`` (``params.conv_first.weight``, ``optimizers.0.state.3.exp_avg``).
    """
    if isinstance(tree, torch.Tensor):
        inexact = tree.is_floating_point() or tree.is_complex()
        return (prefix, tree) if inexact and not bool(torch.isfinite(tree).all()) else None
    if isinstance(tree, dict):
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return None
    for key, value in items:
        found = first_nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def load_weights(path: str, param_key: str | None = "params", what: str = "network") -> dict[str, Any]:
    """The weights of a BasicSR network checkpoint, through :func:`safe_load`.

    Takes the ``param_key`` entry, ``params`` where that is absent (as BasicSR does for
    ``params_ema``), or the whole file when it is a bare state dict; DDP's ``module.`` prefix is
    dropped.

    Raises:
        CheckpointError: naming the file, as :func:`safe_load` does, or when it holds no such entry.
    """
    loaded = safe_load(path, what)
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{what} {path}: holds a {type(loaded).__name__}, not a mapping of weights")
    entry = next((key for key in (param_key, "params") if key is not None and isinstance(loaded.get(key), dict)), None)
    if entry is not None:
        loaded = loaded[entry]
    elif not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CheckpointError(f"{what} {path}: no {param_key!r} entry (has {', '.join(map(str, loaded))})")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def state_dict_mismatch(net: torch.nn.Module, params: dict[str, Any]) -> str:
    """One line on why ``params`` does not load into ``net``: counts and the first example of each kind."""
    own = net.state_dict()
    missing = [key for key in own if key not in params]
    unexpected = [key for key in params if key not in own]
    resized = [key for key in own if key in params and tuple(own[key].shape) != tuple(params[key].shape)]
    parts = []
    if resized:
        key = resized[0]
        parts.append(
            f"{len(resized)} tensor(s) of other shapes (first: {key} is {list(params[key].shape)} in the checkpoint, "
            f"{list(own[key].shape)} in the network)"
        )
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return "; ".join(parts) or "the tensors do not load"


def load_fitting(net: torch.nn.Module, params: dict[str, Any], strict: bool = True) -> None:
    """``net.load_state_dict(params)``; a mismatch raises ValueError with :func:`state_dict_mismatch`'s line.

    A network that explains its own mismatch with a ValueError (ERLNet) is left to say it.
    """
    try:
        net.load_state_dict(params, strict=strict)
    except RuntimeError:
        raise ValueError(state_dict_mismatch(net, params)) from None


def checkpoint_iterations(state_dir: str) -> list[int]:
    """Iterations of the ``<iter>.state`` files in ``state_dir``, newest first."""
    if not os.path.isdir(state_dir):
        return []
    stems = (name[: -len(".state")] for name in os.listdir(state_dir) if name.endswith(".state"))
    return sorted((int(stem) for stem in stems if stem.isdigit()), reverse=True)


def prune_checkpoints(state_dir: str, models_dir: str, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` training states and the network files each one recorded.

    Only what the training wrote is deleted: a state that does not load as one, and a network file that
    its state does not list or whose bytes no longer match the recorded checksum, are kept, whatever
    their names. Other files (``net_g_latest.pth``, ``net_g_stage1.pth``, ``memd_stage1.pth``) are never
    candidates. Returns the deleted paths.
    """
    deleted = []
    for iteration in sorted(checkpoint_iterations(state_dir)[keep_last:]):
        path = os.path.join(state_dir, f"{iteration}.state")
        try:
            state = safe_load(path, "training state", lazy=True)  # only its file list is read
        except CheckpointError:
            continue
        files = state.get("files") if isinstance(state, dict) else None
        if not isinstance(files, dict):
            continue
        networks = [
            network
            for name, digest in sorted(files.items())
            if os.path.basename(name) == name
            and os.path.isfile(network := os.path.join(models_dir, name))
            and not os.path.islink(network)
            and file_digest(network) == digest
        ]
        for victim in (path, *networks):  # the state first: a state never outlives the networks it names
            os.remove(victim)
            deleted.append(victim)
    return deleted


def check_pretrained_fits(net: torch.nn.Module, path: Mapping[str, Any], suffix: str, what: str | None = None) -> None:
    """Load ``path.pretrain_network_<suffix>`` into ``net`` as BasicSR will (a missing file is left to the
    path checks).

    Raises:
        ValueError: ``path.pretrain_network_<suffix>: <file> cannot be loaded as weights / does not fit ...``.
    """
    key = f"pretrain_network_{suffix}"
    checkpoint = path.get(key)
    if not isinstance(checkpoint, str) or not os.path.isfile(os.path.expanduser(checkpoint)):
        return
    try:
        params = load_weights(os.path.expanduser(checkpoint), path.get(f"param_key_{suffix}", "params"))
    except CheckpointError as error:  # a corrupt or unsafe file, or non-finite weights
        raise ValueError(f"path.{key}: {checkpoint} cannot be loaded as weights: {error}") from None
    try:
        load_fitting(net, params, strict=path.get(f"strict_load_{suffix}", True))
    except ValueError as error:
        raise ValueError(f"path.{key}: {checkpoint} does not fit {what or f'network_{suffix}'}: {error}") from None
