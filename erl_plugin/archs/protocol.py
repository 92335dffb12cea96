"""The encoder/decoder protocol through which the ERL wrapper entangles any U-Net.

ERL-Net (Sec. 3.2, Fig. 2) adds the output of a residual encoder branch to the main encoder's
features at every entanglement point: the bottleneck (CLGD) or the bottleneck and every skip
connection (MLGD). To wrap a network, the wrapper needs its encoder and decoder as two separate
calls and a description of the features passed between them. A network conforms when it offers:

``encode(x, inject=None) -> (bottleneck, skips)``
    Runs the encoder. ``skips`` is ordered from the highest resolution down and may be empty
    (a U-Net without skip connections). The network may pad ``x`` internally. When given,
    ``inject(i, feature)`` is called at each entanglement point ``i`` (``feature_info`` order)
    as soon as that feature exists; what it returns replaces the feature, both in what flows on
    into the deeper encoder layers and in what ``encode`` returns.

``decode(bottleneck, skips, x) -> Tensor``
    Runs the decoder on (possibly modified) encoder features. ``x`` is the original, unpadded
    input, for networks with a global residual and for cropping the padding back off.

``feature_info: list[FeaturePoint]``
    One entry per entanglement point: the skips, highest resolution first, then the bottleneck
    last. ``feature_info[i].num_chs`` and ``feature_info[i].reduction`` equal the channel count
    and the stride (relative to the padded input) of the ``i``-th tensor of
    ``[*skips, bottleneck]``.

``decoder_modules: tuple[str, ...]``
    Paths of the submodules that make up the decoder (``head`` or ``blocks.3``); every other
    parameter belongs to the encoder. The wrapper builds its residual encoder from the backbone's
    options and removes these, and names the parameter groups ``main_encoder`` and ``decoder``
    with them.

The contract that ties these together: ``forward(x) == decode(*encode(x), x)``.

Example:
    >>> bottleneck, skips = net.encode(x)
    >>> out = net.decode(bottleneck + residual, skips, x)
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

Inject = Callable[[int, Tensor], Tensor]
"""``inject(point_index, feature) -> feature``, see :meth:`EncoderDecoder.encode`."""


@dataclass(frozen=True)
class FeaturePoint:
    """One feature map handed from the encoder to the decoder (timm-style naming).

    Args:
        name (str): Identifier of the point, e.g. ``"skip0"`` or ``"bottleneck"``.
        num_chs (int): Number of channels of the feature map.
        reduction (int): Spatial stride of the feature map relative to the (padded) input.
    """

    name: str
    num_chs: int
    reduction: int


@runtime_checkable
class EncoderDecoder(Protocol):
    """A network split into ``encode`` and ``decode``; see the module docstring for the contract."""

    feature_info: list[FeaturePoint]
    decoder_modules: tuple[str, ...]

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        """Return ``(bottleneck, skips)``, skips ordered from the highest resolution down."""
        ...

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        """Return the network output for the given encoder features and original input ``x``."""
        ...


def as_feature_points(feature_info: object) -> list[FeaturePoint] | None:
    """``feature_info`` as :class:`FeaturePoint` s: a list of them, or timm's list of dicts with ``num_chs``
    and ``reduction`` (``module`` or ``name`` naming the point; ``point<i>`` when neither is given). None
    for anything else."""
    if not isinstance(feature_info, list):
        return None
    points = []
    for index, point in enumerate(feature_info):
        if isinstance(point, FeaturePoint):
            points.append(point)
        elif isinstance(point, Mapping) and all(
            isinstance(point.get(key), int) and not isinstance(point.get(key), bool) for key in ("num_chs", "reduction")
        ):
            name = str(point.get("name") or point.get("module") or f"point{index}")
            points.append(FeaturePoint(name, point["num_chs"], point["reduction"]))
        else:
            return None
    return points


def protocol_problems(net: object) -> list[str]:
    """What ``net`` lacks to follow :class:`EncoderDecoder` (empty when it conforms).

    A timm-style ``feature_info`` (dicts with ``num_chs`` and ``reduction``) is accepted and replaced on
    ``net`` by the equivalent :class:`FeaturePoint` list.
    """
    problems = [f"no callable {name}()" for name in ("encode", "decode") if not callable(getattr(net, name, None))]
    points = as_feature_points(getattr(net, "feature_info", None))
    if points is None:
        problems.append(
            "feature_info is not a list of FeaturePoint (or of timm-style dicts with integer num_chs and reduction)"
        )

    decoder_modules = getattr(net, "decoder_modules", None)
    modules = dict(net.named_modules()) if isinstance(net, nn.Module) else {}
    if not isinstance(decoder_modules, tuple) or not all(name and name in modules for name in decoder_modules):
        problems.append("decoder_modules is not a tuple naming submodules")
    if not problems:
        net.feature_info = points
    return problems


def _under(name: str, paths: Sequence[str]) -> bool:
    """Whether the dotted ``name`` lies in one of the module ``paths``."""
    return any(name.startswith(f"{path}.") for path in paths)


def part_parameters(net: nn.Module, part: str) -> Iterator[nn.Parameter]:
    """Parameters of a protocol network's ``encoder`` or ``decoder`` (split by ``decoder_modules``)."""
    if part not in ("encoder", "decoder"):
        raise ValueError(f"part={part!r} is not allowed; choose encoder or decoder")
    for name, param in net.named_parameters():
        if _under(name, net.decoder_modules) == (part == "decoder"):
            yield param


class RemovedModule(nn.Identity):
    """What :func:`remove_modules` leaves in place of a module: no parameters, passes its input on."""


def remove_modules(net: nn.Module, paths: Sequence[str]) -> None:
    """Replace the submodules at ``paths`` by :class:`RemovedModule` (list indices and names stay)."""
    for path in paths:
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent), name, RemovedModule())


def check_feature_shapes(
    points: Sequence[FeaturePoint], features: Sequence[Tensor], size: torch.Size, owner: str
) -> None:
    """Check ``features`` against ``points``: channels and stride for an input of spatial ``size``.

    Raises:
        ValueError: naming ``owner``, the point, what ``feature_info`` says and the tensor's shape.
    """
    if len(features) != len(points):
        raise ValueError(f"{owner}: feature_info lists {len(points)} points but encode() gave {len(features)} tensors")
    height, width = size[-2:]
    for point, feature in zip(points, features, strict=True):
        expected = (point.num_chs, -(-height // point.reduction), -(-width // point.reduction))
        if feature.ndim != 4 or tuple(feature.shape[1:]) != expected:
            raise ValueError(
                f"{owner}: {point.name} has shape {tuple(feature.shape)} for an input of {height}x{width}, "
                f"but feature_info says {point.num_chs} channels at stride {point.reduction}, i.e. (N, *{expected})"
            )


def implements_protocol(net: object) -> bool:
    """Tell whether ``net`` follows :class:`EncoderDecoder`.

    Stricter than ``isinstance(net, EncoderDecoder)``: ``encode`` and ``decode`` must be callable,
    ``feature_info`` must be a list of :class:`FeaturePoint` and ``decoder_modules`` must name
    child modules.
    """
    return not protocol_problems(net)
