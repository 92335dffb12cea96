"""A pretrained restorer as the ERL backbone: ``backbone: {checkpoint: PATH}``.

ERL improves a trained basic model. A restorer trained elsewhere (a NAFNet, say) is wrapped without
writing its architecture into BasicSR first: spandrel (an optional dependency, ``pip install
'erl-plugin[backbones]'``) reads the checkpoint, recognises the architecture and its hyperparameters from
the names and shapes of the tensors, and builds the network with the checkpoint's weights.
:func:`erl_plugin.archs.erl_arch.build_backbone` then wraps it as it wraps any network: through the adapter
registered under spandrel's id of the architecture (``NAFNet``: :mod:`erl_plugin.archs.nafnet_adapter`),
checked against the network's own forward; or, without one, at the module paths ``entangle_at`` names;
otherwise it refuses, naming the architecture.

Next to ``checkpoint``, ``type`` is optional: given, it must be spandrel's id of the architecture (a check
that the file holds what the options expect); missing, it is filled in with that id. The checkpoint fixes
every hyperparameter, so no other key is allowed.
"""

import copy
import functools
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
from torch import nn

PRETRAINED_KEYS = ("type", "checkpoint")
SPANDREL_MISSING = (
    "backbone.checkpoint needs spandrel to recognise the architecture: pip install 'erl-plugin[backbones]'"
)
EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors")
"""The checkpoint files spandrel reads."""
SHOWN_KEYS = 5
"""Keys of an unrecognised checkpoint quoted in the refusal."""


def is_pretrained(options: object) -> bool:
    """Whether backbone ``options`` name a pretrained restorer (``checkpoint``) rather than a registered network."""
    return isinstance(options, Mapping) and "checkpoint" in options


def _spandrel() -> ModuleType:
    try:
        import spandrel
    except ImportError:
        raise ImportError(SPANDREL_MISSING) from None
    return spandrel


def checkpoint_path(options: Mapping[str, Any]) -> str:
    """The file ``backbone.checkpoint`` names, after checking the backbone's keys and the file.

    Raises:
        ValueError: a key besides ``type`` and ``checkpoint``, a path that is not a file, or an extension
            spandrel does not read.
    """
    extra = sorted(set(options) - set(PRETRAINED_KEYS))
    if extra:
        raise ValueError(
            f"backbone: {', '.join(extra)} next to checkpoint: the checkpoint fixes the architecture and its "
            f"hyperparameters; allowed keys: checkpoint, and type (spandrel's name of the architecture, checked)"
        )
    path = options["checkpoint"]
    if not isinstance(path, str | os.PathLike) or not os.fspath(path).strip():
        raise ValueError(f"backbone.checkpoint: {path!r} must be the path of a checkpoint file")
    path = os.fspath(path)
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (a relative path is read from {os.getcwd()})"
        raise ValueError(f"backbone.checkpoint: {path!r} is not a file{where}")
    if not path.lower().endswith(EXTENSIONS):
        raise ValueError(f"backbone.checkpoint: {path!r}: spandrel reads {', '.join(EXTENSIONS)} files")
    return path


def load_pretrained(options: Mapping[str, Any], weights: bool = True) -> tuple[str, nn.Module]:
    """The network ``backbone.checkpoint`` holds, as spandrel recognises it: ``(architecture, network)``.

    Args:
        options: ``{checkpoint: PATH}``, or ``{type: ..., checkpoint: PATH}`` with ``type`` spandrel's id
            of the architecture (``NAFNet``).
        weights: The network carries the checkpoint's weights; ``False`` builds the same architecture
            freshly initialised (a teacher, a residual encoder that does not start from the backbone).

    Raises:
        ImportError: spandrel is not installed.
        ValueError: naming the file: unreadable, an architecture spandrel does not recognise, weights that
            do not fit it, or a ``type`` other than the one recognised.
    """
    path = checkpoint_path(options)
    stat = os.stat(path)
    version = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    # On the default device: the options check sizes networks on the meta device, without reading weights.
    architecture, recognised = _recognise(path, version, str(torch.get_default_device()))
    expected = options.get("type")
    if expected is not None and expected != architecture:
        raise ValueError(
            f"backbone.type: {expected!r}, but spandrel recognises backbone.checkpoint {path!r} as {architecture}; "
            f"give type: {architecture}, or leave type out"
        )
    if weights:
        network = copy.deepcopy(recognised)
    else:
        network = type(recognised)(**copy.deepcopy(recognised.hyperparameters))
    return architecture, network.train()


@functools.lru_cache(maxsize=4)
def _recognise(path: str, version: tuple[str, int, int], device: str) -> tuple[str, nn.Module]:
    """spandrel's reading of the checkpoint at ``path`` onto ``device``: ``(architecture id, network)``, kept per
    file ``version`` (absolute path, modification time, size) and device, since an ERLNet build asks for its
    backbone several times (the backbone, the residual encoder, the teacher); callers copy the network.

    Raises:
        ImportError: spandrel is not installed.
        ValueError: naming the file (see :func:`load_pretrained`).
    """
    spandrel = _spandrel()
    loader = spandrel.ModelLoader(device=torch.device(device))
    try:
        state_dict = loader.load_state_dict_from_file(path)
    except Exception as error:  # torch.load, its restricted unpickler and safetensors each raise their own
        raise ValueError(f"backbone.checkpoint: {path!r} cannot be read as a checkpoint: {error}") from None
    try:
        descriptor = loader.load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        keys = [str(key) for key in state_dict][:SHOWN_KEYS]
        more = f", ... ({len(state_dict)} in all)" if len(state_dict) > SHOWN_KEYS else ""
        raise ValueError(
            f"backbone.checkpoint: spandrel {spandrel.__version__} does not recognise the architecture of {path!r} "
            f"(keys: {', '.join(keys) or 'none'}{more}). For a network of your own, register it in "
            f"BasicSR's ARCH_REGISTRY, give backbone: {{type: <its name>, ...}} and load the file with "
            f"path.pretrain_network_g (docs/wrap_your_network.md)"
        ) from None
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        raise ValueError(
            f"backbone.checkpoint: spandrel recognises the kind of network in {path!r} but cannot build it from "
            f"the file's tensors: {error}"
        ) from None
    return descriptor.architecture.id, descriptor.model


def pretrained_architecture(options: Mapping[str, Any]) -> str:
    """spandrel's id of the architecture ``backbone.checkpoint`` holds (``NAFNet``); see :func:`load_pretrained`."""
    return load_pretrained(options)[0]
