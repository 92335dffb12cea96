"""The module-path fallback: entangle a network with no adapter at named submodules, through hooks.

``ERLNet(backbone={type: X, ...}, entangle_at={bottleneck: 'path.to.module', skips: [...]})``
wraps any registered network. Forward hooks, registered when the wrapper is built (so before any
``torch.compile``), capture the outputs of the named modules and add the residuals to them.

What hooks can do, and what they refuse:

- a hook changes a module's output everywhere it goes. At the bottleneck that is the decoder only,
  so CLGD is correct whenever the bottleneck is a module output;
- a skip that is a module output usually also feeds the deeper encoder. Then adding a residual to
  the skip alone (``inject: decoder``) is impossible; a probe finds this (it perturbs each skip
  and watches the deeper points) and the wrapper refuses MLGD with ``inject: decoder`` there,
  offering ``inject: encoder`` (the residual flows on into the deeper encoder as well);
- skips that are not module outputs (an activation applied functionally) need an adapter
  (:mod:`erl_plugin.archs.adapters`).

The residual encoder is the network rebuilt from its options, with every module whose parameters
no entanglement point depends on removed (no unused parameters under DDP; a removed module that
the forward pass still calls before the last point is an identity there); its forward stops right
after that point.
"""

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from erl_plugin.archs.adapters import AdoptedNetwork, evaluating, probe_input
from erl_plugin.archs.protocol import FeaturePoint, Inject, check_feature_shapes

PROBE_SIZE = 64
"""Height and width of the probe input that measures channels and strides."""


@dataclass(frozen=True)
class EntangleAt:
    """Where a network without adapter is entangled: module paths of the bottleneck and the skips."""

    bottleneck: str
    skips: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """The skips (highest resolution first), then the bottleneck: ``feature_info`` order."""
        return (*self.skips, self.bottleneck)

    @classmethod
    def parse(cls, options: object) -> "EntangleAt":
        """Read ``{bottleneck: str, skips: [str, ...]}``; raise ``ValueError`` naming the key."""
        if isinstance(options, EntangleAt):
            return options
        if not isinstance(options, Mapping) or set(options) - {"bottleneck", "skips"}:
            raise ValueError(f"entangle_at must be a mapping with keys bottleneck and skips, got {options!r}")
        bottleneck, skips = options.get("bottleneck"), options.get("skips") or []
        if not isinstance(bottleneck, str) or not bottleneck:
            raise ValueError(f"entangle_at.bottleneck must be a module path (a string), got {bottleneck!r}")
        if not isinstance(skips, Sequence) or isinstance(skips, str):
            raise ValueError(f"entangle_at.skips must be a list of module paths, got {skips!r}")
        for index, skip in enumerate(skips):
            if not isinstance(skip, str) or not skip:
                raise ValueError(f"entangle_at.skips[{index}] must be a module path (a string), got {skip!r}")
        paths = [*skips, bottleneck]
        if len(set(paths)) != len(paths):
            raise ValueError(f"entangle_at names a module twice: {paths}")
        return cls(bottleneck, tuple(skips))

    def as_options(self) -> dict[str, Any]:
        """The options form, ``{bottleneck: ..., skips: [...]}``."""
        return {"bottleneck": self.bottleneck, "skips": list(self.skips)}


class _EncoderDone(Exception):
    """Raised by the last entanglement point's hook to stop a forward pass that needs the encoder only."""


@dataclass
class _Run:
    """State of one hooked forward pass."""

    inject: Inject | None
    stop_when_done: bool
    captured: dict[int, Tensor] = field(default_factory=dict)


class ModulePathBackbone(AdoptedNetwork):
    """A network entangled through forward hooks at the modules ``entangle_at`` names.

    It adopts the network's modules under their own names (its checkpoints load unchanged) and
    offers ``encode`` (the features at the points, stopping the forward pass after the last one)
    and :meth:`run` (the whole forward pass, with an ``inject`` applied at each point). It has no
    ``decode``: the decoder is the rest of the network's own forward.

    Args:
        network (nn.Module): The network, as its registry built it.
        entangle_at (EntangleAt): The module paths.

    Raises:
        ValueError: a path that is not a module (with close matches), a point whose output is not
            a tensor, runs more than once, or whose size is not an integer fraction of the input.
    """

    def __init__(self, network: nn.Module, entangle_at: EntangleAt) -> None:
        super().__init__(network)
        self.entangle_at = entangle_at
        modules = dict(network.named_modules())
        for key, path in [
            *((f"skips[{i}]", p) for i, p in enumerate(entangle_at.skips)),
            ("bottleneck", entangle_at.bottleneck),
        ]:
            if path not in modules:
                close = difflib.get_close_matches(path, [name for name in modules if name], n=3, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                top = ", ".join(name for name, _ in network.named_children())
                raise ValueError(
                    f"entangle_at.{key}: {path!r} is not a module of {self.network_name}{hint} "
                    f"(its top-level modules: {top})"
                )
        self._run: _Run | None = None
        for index, path in enumerate(entangle_at.paths):
            modules[path].register_forward_hook(self._hook(index))
        self.feature_info: list[FeaturePoint] = self._measure_points()
        self.decoder_modules: tuple[str, ...] = self._modules_after_last_point()

    def _hook(self, index: int) -> Any:
        path = self.entangle_at.paths[index]

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            run = self._run
            if run is None:
                return None
            if not isinstance(output, Tensor):
                raise TypeError(f"entangle_at: {path!r} returns {type(output).__name__}, not a tensor")
            if index in run.captured:
                raise ValueError(
                    f"entangle_at: {path!r} runs more than once in one forward pass of {self.network_name}"
                )
            if run.inject is not None:
                output = run.inject(index, output)
            run.captured[index] = output
            if run.stop_when_done and len(run.captured) == len(self.entangle_at.paths):
                raise _EncoderDone
            return output

        return hook

    def _hooked(self, x: Tensor, inject: Inject | None, stop_when_done: bool) -> tuple[Tensor | None, list[Tensor]]:
        self._run = run = _Run(inject, stop_when_done)
        out = None
        try:
            out = self.network(x)
        except _EncoderDone:
            pass
        finally:
            self._run = None
        missing = [self.entangle_at.paths[i] for i in range(len(self.entangle_at.paths)) if i not in run.captured]
        if missing:
            raise ValueError(f"entangle_at: {', '.join(map(repr, missing))} never ran in {self.network_name}'s forward")
        return out, [run.captured[i] for i in range(len(self.entangle_at.paths))]

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        """The features at the points (skips, bottleneck); the forward pass stops after the last point."""
        _, features = self._hooked(x, inject, stop_when_done=True)
        return features[-1], features[:-1]

    def run(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        """The network's output and its features at the points, ``inject`` applied at each point."""
        return self._hooked(x, inject, stop_when_done=False)

    def forward(self, x: Tensor) -> Tensor:
        """The network's own forward pass, untouched."""
        return self.network(x)

    @torch.no_grad()
    def _measure_points(self) -> list[FeaturePoint]:
        x = probe_input(self, PROBE_SIZE, PROBE_SIZE)
        with evaluating(self):
            bottleneck, skips = self.encode(x)
        points = []
        names = [*(f"skip{i}" for i in range(len(skips))), "bottleneck"]
        for name, path, feature in zip(names, self.entangle_at.paths, [*skips, bottleneck], strict=True):
            height = feature.shape[-2] if feature.ndim == 4 else 0
            if feature.ndim != 4 or height == 0 or PROBE_SIZE % height or feature.shape[-1] != height:
                raise ValueError(
                    f"entangle_at: {path!r} gives shape {tuple(feature.shape)} for a {tuple(x.shape)} input; "
                    f"an entanglement point must be (N, C, H/s, W/s) for an integer stride s"
                )
            points.append(FeaturePoint(name, feature.shape[1], PROBE_SIZE // height))
        return points

    def _modules_after_last_point(self) -> tuple[str, ...]:
        """Paths of the largest subtrees holding parameters that no entanglement point depends on.

        A probe back-propagates from the features at the points: a parameter that gets no gradient
        belongs to the decoder (or to nothing the points need).
        """
        params = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        with evaluating(self), torch.enable_grad():
            bottleneck, skips = self.encode(probe_input(self, PROBE_SIZE, PROBE_SIZE))
            total = sum(feature.float().sum() for feature in [*skips, bottleneck])
            grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True) if params else []
        needed = {""}
        for (name, _), grad in zip(params, grads, strict=True):
            if grad is not None:
                parts = name.split(".")
                needed.update(".".join(parts[:i]) for i in range(1, len(parts)))
        holders = {name.rpartition(".")[0] for name, _ in params}
        with_params = {".".join(path.split(".")[:i]) for path in holders for i in range(1, path.count(".") + 2)}
        return tuple(
            name
            for name, _ in self.named_modules()
            if name in with_params and name not in needed and name.rpartition(".")[0] in needed
        )

    def check_encoder(self) -> None:
        """Run :meth:`encode` on a probe (after :func:`remove_modules`) and check its shapes.

        Raises:
            ValueError: when the forward pass needs a removed module before the last point.
        """
        x = probe_input(self, PROBE_SIZE, PROBE_SIZE)
        try:
            with evaluating(self), torch.no_grad():
                bottleneck, skips = self.encode(x)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise ValueError(
                f"entangle_at: {self.network_name}'s forward computes part of what follows the last point "
                f"({self.entangle_at.paths[-1]!r}) before it, and fails without those modules "
                f"({', '.join(self.decoder_modules)}): {error}. Write an adapter (docs/wrap_your_network.md)"
            ) from None
        check_feature_shapes(self.feature_info, [*skips, bottleneck], x.shape, f"{self.network_name} (entangle_at)")

    def skips_feeding_deeper(self) -> dict[str, list[str]]:
        """For each skip whose output reaches a later point of the encoder, the points it changes.

        A probe adds a perturbation at one skip and compares what the later points receive.
        """
        x = probe_input(self, PROBE_SIZE, PROBE_SIZE)
        feeding = {}
        with evaluating(self), torch.no_grad():
            bottleneck, skips = self.encode(x)
            reference = [*skips, bottleneck]
            for index, path in enumerate(self.entangle_at.skips):

                def perturb(i: int, feature: Tensor, index: int = index) -> Tensor:
                    return feature + 1.0 if i == index else feature

                bottleneck, skips = self.encode(x, inject=perturb)
                changed = [
                    self.entangle_at.paths[j]
                    for j, feature in enumerate([*skips, bottleneck])
                    if j > index and not torch.equal(feature, reference[j])
                ]
                if changed:
                    feeding[path] = changed
        return feeding
