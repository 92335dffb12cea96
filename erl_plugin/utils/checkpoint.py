"""Checkpoint files that a kill cannot leave half-written, and loading that cannot run code.

:func:`atomic_save` writes to ``<path>.tmp``, fsyncs it, renames it over ``path`` and fsyncs the
folder: a reader sees the old file or the new one, never a partial one. It returns the SHA-256 of
the bytes written, which training states record so that resume can check the network files they
point to. :func:`safe_load` is the one way the plugin reads a ``.pth`` or ``.state`` file:
``torch.load(weights_only=True)`` with a short allow-list, and a :class:`CheckpointError` naming
the file when it is truncated, corrupt, or needs arbitrary unpickling.
"""

import collections
import hashlib
import io
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

SAFE_GLOBALS: tuple[type, ...] = (collections.Counter,)
"""Types beyond torch's own weights-only set that training states hold (``MultiStepRestartLR`` milestones)."""

TMP_SUFFIX = ".tmp"
_NETWORK_FILE = re.compile(r"^net_\w+?_(\d+)\.pth$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or not plain weights."""


def _fsync_dir(folder: str) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is then as durable as they allow
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_save(obj: Any, path: str) -> str:
    """``torch.save`` ``obj`` to ``path`` through a fsynced temporary file; return the SHA-256 of the bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(buffer.getbuffer(), path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` as :func:`atomic_write_bytes` does; the folder is created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_write_bytes(text.encode("utf-8"), str(path))


def atomic_write_bytes(data: bytes | memoryview, path: str) -> str:
    """Write ``data`` to ``path`` through a fsynced temporary file renamed over it (a reader sees the old
    file or the new one, never a part); return the SHA-256 of the bytes."""
    tmp = f"{path}{TMP_SUFFIX}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return hashlib.sha256(data).hexdigest()


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


def safe_load(path: str, what: str = "checkpoint") -> Any:
    """Load ``path`` on the CPU with ``weights_only=True``.

    Args:
        path: A ``.pth`` or ``.state`` file.
        what: What the file is, for messages.

    Raises:
        CheckpointError: naming the file, when it is missing, truncated or corrupt, or holds objects
            that only arbitrary unpickling could rebuild (such files are refused, never executed).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        with _allow_safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
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
    """Delete all but the newest ``keep_last`` training states and their ``net_*_<iter>.pth`` files.

    Files of other names (``net_g_latest.pth``, ``net_g_stage1.pth``, ``memd_stage1.pth``) are kept.
    Returns the deleted paths.
    """
    old = set(checkpoint_iterations(state_dir)[keep_last:])
    if not old:
        return []
    deleted = [os.path.join(state_dir, f"{it}.state") for it in sorted(old)]
    for name in sorted(os.listdir(models_dir)) if os.path.isdir(models_dir) else []:
        match = _NETWORK_FILE.match(name)
        if match and int(match.group(1)) in old:
            deleted.append(os.path.join(models_dir, name))
    for path in deleted:  # states first: a state never outlives the networks it names
        os.remove(path)
    return deleted
