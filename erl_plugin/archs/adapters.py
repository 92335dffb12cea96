"""Adapters: the encoder/decoder protocol for networks whose code we do not own.

An adapter is a small class that calls a network's own submodules as ``encode`` and ``decode``
(see :mod:`erl_plugin.archs.protocol`). It adopts the network's submodules, parameters and buffers
under their own names, so the adapted network's ``state_dict`` is the network's and its existing
checkpoints load unchanged. Plain attributes (``self.skip_connection``) are read from the network.

Register an adapter for the names the network has in BasicSR's ``ARCH_REGISTRY``; ERLNet then
wraps ``backbone: {type: <name>, ...}`` through it. When an adapter is applied, a probe checks on
two input sizes that ``decode(*encode(x), x)`` reproduces the network's own ``forward(x)`` and that
``encode`` gives the shapes ``feature_info`` declares.

Example (the whole adapter for a network with ``stem``, ``down``, ``up`` and ``head``):
    >>> @register_adapter("MyUNet")
    ... class MyUNetAdapter(Adapter):
    ...     decoder_modules = ("up", "head")
    ...     def feature_points(self):
    ...         return [FeaturePoint("skip0", 16, 1), FeaturePoint("bottleneck", 32, 2)]
    ...     def encode(self, x, inject=None):
    ...         skip = self.stem(x)
    ...         skip = inject(0, skip) if inject else skip
    ...         bottleneck = self.down(skip)
    ...         return (inject(1, bottleneck) if inject else bottleneck), [skip]
    ...     def decode(self, bottleneck, skips, x):
    ...         return self.head(self.up(bottleneck) + skips[0])
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erl_plugin.archs.protocol import FeaturePoint, Inject, check_feature_shapes

PROBE_SEED = 2019
"""Seed of the probe inputs (a private generator: probing never moves the global RNG)."""


def probe_input(net: nn.Module, height: int, width: int) -> Tensor:
    """A random (1, C, height, width) input for ``net``; C from its first convolution."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise TypeError(f"{type(net).__name__} has no nn.Conv2d to tell its input channels from")
    param = next(net.parameters())
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.rand(1, conv.in_channels, height, width, generator=generator).to(param.device, param.dtype)


@contextmanager
def evaluating(net: nn.Module) -> Iterator[None]:
    """Run the block with ``net`` in eval mode (probes must not move BatchNorm or spectral-norm state)."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


class AdoptedNetwork(nn.Module):
    """A module that owns another network's submodules, parameters and buffers under their names.

    The network itself is kept as ``self.network`` (not registered: its weights are these), so the
    network's own ``forward`` still runs on the very same modules.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self._modules.update(network._modules)
        self._parameters.update(network._parameters)
        self._buffers.update(network._buffers)
        self._non_persistent_buffers_set.update(network._non_persistent_buffers_set)
        object.__setattr__(self, "network", network)

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute; a top-level module replaced here (``remove_modules``) is replaced in the network
        too, so that its own forward never runs a module, or weights, that this module no longer owns."""
        super().__setattr__(name, value)
        network = self.__dict__.get("network")
        if network is not None and isinstance(value, nn.Module) and name in network._modules:
            network._modules[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            network = self.__dict__.get("network")
            if network is None:
                raise
            return getattr(network, name)

    def train(self, mode: bool = True) -> "AdoptedNetwork":
        """Set the mode of the adopted modules and of the network itself (its forward may read it)."""
        self.network.training = mode
        return super().train(mode)

    @property
    def network_name(self) -> str:
        """The adopted network's class name, for messages."""
        return type(self.network).__name__


class Adapter(AdoptedNetwork, ABC):
    """Base class of adapters; subclasses define ``decoder_modules``, ``feature_points``, ``encode``, ``decode``.

    Args:
        network (nn.Module): The network to adapt, as its registry built it.
    """

    decoder_modules: ClassVar[tuple[str, ...]] = ()
    probe_sizes: ClassVar[tuple[tuple[int, int], ...]] = ((32, 48), (80, 64))
    """Probe input sizes (height, width), each rounded up to a multiple of the deepest stride."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__(network)
        self.feature_info: list[FeaturePoint] = self.feature_points()

    @abstractmethod
    def feature_points(self) -> list[FeaturePoint]:
        """The entanglement points: skips from the highest resolution down, then the bottleneck."""

    @abstractmethod
    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        """Run the network's encoder; see :class:`erl_plugin.archs.protocol.EncoderDecoder`."""

    @abstractmethod
    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        """Run the network's decoder; see :class:`erl_plugin.archs.protocol.EncoderDecoder`."""

    def forward(self, x: Tensor) -> Tensor:
        """``decode(*encode(x), x)``, which :meth:`verify` checks equals the network's forward."""
        return self.decode(*self.encode(x), x)

    @torch.no_grad()
    def verify(self, atol: float = 1e-5) -> None:
        """Check the adapter against the network on :attr:`probe_sizes` (in eval mode).

        Raises:
            ValueError: naming the input shape where the shapes of ``encode`` disagree with
                ``feature_info`` or where ``decode(*encode(x), x)`` differs from ``forward(x)``.
        """
        owner = f"{type(self).__name__} (adapter of {self.network_name})"
        stride = self.feature_info[-1].reduction
        with evaluating(self):
            agreed = []
            for height, width in self.probe_sizes:
                x = probe_input(self, -(-height // stride) * stride, -(-width // stride) * stride)
                try:
                    expected = self.network(x)
                    bottleneck, skips = self.encode(x)
                    check_feature_shapes(self.feature_info, [*skips, bottleneck], x.shape, owner)
                    actual = self.decode(bottleneck, skips, x)
                except RuntimeError as error:
                    raise ValueError(f"{owner}: fails on an input of shape {tuple(x.shape)}: {error}") from None
                if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=atol, rtol=0):
                    gap = (actual - expected).abs().max().item() if actual.shape == expected.shape else "shape"
                    where = f" (it agrees at {', '.join(agreed)})" if agreed else ""
                    raise ValueError(
                        f"{owner}: decode(*encode(x), x) differs from {self.network_name}.forward(x) for an input "
                        f"of shape {tuple(x.shape)}{where}: max |difference| {gap}, output shapes "
                        f"{tuple(actual.shape)} and {tuple(expected.shape)}. The network's forward takes a path "
                        f"the adapter does not follow (does it branch on the input shape?)"
                    )
                agreed.append(str(tuple(x.shape)))


ADAPTERS: dict[str, type[Adapter]] = {}
"""Adapter classes by the network names they serve (names in BasicSR's ``ARCH_REGISTRY``)."""

AdapterType = TypeVar("AdapterType", bound=type[Adapter])


def register_adapter(*network_names: str) -> Callable[[AdapterType], AdapterType]:
    """Class decorator: adapt the networks registered under ``network_names`` with this class."""
    if not network_names:
        raise ValueError("register_adapter needs at least one network name")

    def register(cls: AdapterType) -> AdapterType:
        for name in network_names:
            if name in ADAPTERS and ADAPTERS[name] is not cls:
                raise KeyError(f"{name} already has an adapter: {ADAPTERS[name].__name__}")
            ADAPTERS[name] = cls
        return cls

    return register


def _leaky(x: Tensor) -> Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


@register_adapter("UNetDiscriminatorSN", "UNetDiscriminatorSN_basicsr")
class UNetDiscriminatorSNAdapter(Adapter):
    """basicsr's ``UNetDiscriminatorSN`` (Real-ESRGAN's U-Net discriminator) as an encoder/decoder.

    A worked example of adapting a third-party U-Net: its skips are activations
    (``leaky_relu(conv(x))``), not module outputs, so a forward hook cannot reach them; its
    convolutions carry spectral norm, whose state (``weight_orig``, ``weight_u``, ``weight_v``)
    stays under the network's own names. Its output has one channel (``num_in_ch`` in, one out).
    Inputs must be multiples of 8, as for the network itself.
    """

    decoder_modules = ("conv4", "conv5", "conv6", "conv7", "conv8", "conv9")

    def feature_points(self) -> list[FeaturePoint]:
        width = self.conv0.out_channels
        skips = [FeaturePoint(f"skip{i}", width * 2**i, 2**i) for i in range(3)] if self.skip_connection else []
        return [*skips, FeaturePoint("bottleneck", width * 8, 8)]

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        skips = []
        feat = x
        for level, conv in enumerate((self.conv0, self.conv1, self.conv2)):
            feat = _leaky(conv(feat))
            if self.skip_connection and inject is not None:
                feat = inject(level, feat)
            skips.append(feat)
        bottleneck = _leaky(self.conv3(feat))
        if inject is not None:
            bottleneck = inject(len(self.feature_info) - 1, bottleneck)
        return bottleneck, skips if self.skip_connection else []

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        feat = bottleneck
        for level, conv in zip((2, 1, 0), (self.conv4, self.conv5, self.conv6), strict=True):
            feat = _leaky(conv(_up(feat)))
            if self.skip_connection:
                feat = feat + skips[level]
        return self.conv9(_leaky(self.conv8(_leaky(self.conv7(feat)))))
