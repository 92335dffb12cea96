"""ERLNet: the entanglement wrapper of ERL-Net (Sec. 3, Eq. 2, Fig. 2) around any U-Net backbone.

A residual encoder (REN) with the structure of the backbone's encoder reads the same rainy input,
and its features are added to the main encoder's: ``Phi(x_r) + R(x_r)`` at the bottleneck (CLGD)
or at the bottleneck and every skip (MLGD). The backbone follows the encoder/decoder protocol of
:mod:`erl_plugin.archs.protocol`; the wrapper calls ``encode`` and ``decode`` explicitly, without
hooks, so it works the same under DDP and ``torch.compile``.

Choices the paper leaves open are options: ``inject`` (where the residual
goes), ``zero_init`` (zero-initialised 1x1 projections on each residual, so that a fresh wrapper
computes exactly what its backbone computes, the way ControlNet attaches to a pretrained U-Net)
and ``ren_init`` (REN starts from the main encoder's weights or from scratch).
"""

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from erl_plugin.archs.protocol import part_parameters, protocol_problems

BRANCHES = ("main_encoder", "decoder", "residual_encoder")
MMENGINE_SCOPE = "erl_plugin."
"""Prefix of the names in mmengine's registry (:mod:`erl_plugin.registry`); BasicSR's names lack it."""
ENTANGLE = ("clgd", "mlgd")
INJECT = ("decoder", "encoder")
REN_INIT = ("main", "random")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    return str(value)


def build_backbone(options: Mapping[str, Any]) -> nn.Module:
    """Build a registered network from ``{type: ..., **kwargs}`` and check it follows the protocol.

    ``type`` is BasicSR's name (``MEMD``) or mmengine's scoped one (``erl_plugin.MEMD``).
    """
    if not isinstance(options, Mapping) or "type" not in options:
        raise ValueError(f"backbone must be a mapping with a 'type' key, got {options!r}")
    kwargs = dict(copy.deepcopy(options))
    name = kwargs.pop("type").removeprefix(MMENGINE_SCOPE)
    if name not in ARCH_REGISTRY:
        raise ValueError(f"backbone.type: {name!r} is not a registered network")
    net = ARCH_REGISTRY.get(name)(**kwargs)
    problems = protocol_problems(net)
    if problems:
        raise TypeError(
            f"backbone.type: {name} does not implement the encoder/decoder protocol "
            f"(erl_plugin.archs.protocol): {'; '.join(problems)}"
        )
    return net


@ARCH_REGISTRY.register()
class ERLNet(nn.Module):
    """A backbone U-Net plus a residual encoder entangled with its features.

    Args:
        backbone (dict): Options of the wrapped network, ``{type: MEMD, ...}``; any registered
            network that follows the encoder/decoder protocol.
        entangle (str): ``clgd`` adds the residual at the bottleneck only, ``mlgd`` at the
            bottleneck and every skip. Default: ``mlgd`` (the paper's best).
        inject (str): ``decoder`` changes only the features handed to the decoder, leaving the main
            encoder's own path untouched; ``encoder`` lets each residual flow on into the deeper
            main-encoder layers. Default: ``decoder``.
        zero_init (bool): Put a zero-initialised 1x1 conv on each residual, so a fresh wrapper
            computes exactly what the backbone computes. ``False`` is the paper's plain sum.
            Default: True.
        ren_init (str): ``main`` starts the residual encoder from the main encoder's weights
            (also when a backbone checkpoint is loaded), ``random`` from its own initialisation.
            Default: ``main``.
    """

    def __init__(
        self,
        backbone: Mapping[str, Any],
        entangle: str = "mlgd",
        inject: str = "decoder",
        zero_init: bool = True,
        ren_init: str = "main",
    ) -> None:
        super().__init__()
        self.entangle = _choice("entangle", entangle, ENTANGLE)
        self.inject = _choice("inject", inject, INJECT)
        self.ren_init = _choice("ren_init", ren_init, REN_INIT)
        self.backbone_options = {**copy.deepcopy(backbone), "type": backbone["type"].removeprefix(MMENGINE_SCOPE)}
        self.backbone = build_backbone(backbone)
        self.residual_encoder = build_backbone(backbone)
        for name in self.backbone.decoder_modules:
            delattr(self.residual_encoder, name)
        points = self.backbone.feature_info
        self.entangled_points = list(range(len(points))) if entangle == "mlgd" else [len(points) - 1]
        self.projections = None
        if zero_init:
            self.projections = nn.ModuleList(
                nn.Conv2d(points[i].num_chs, points[i].num_chs, 1) for i in self.entangled_points
            )
            for projection in self.projections:
                nn.init.zeros_(projection.weight)
                nn.init.zeros_(projection.bias)
        if ren_init == "main":
            self.copy_main_encoder_to_residual()

    @property
    def feature_names(self) -> list[str]:
        """Names of the entanglement points, in the order of the features returned for the loss."""
        return [self.backbone.feature_info[i].name for i in self.entangled_points]

    def copy_main_encoder_to_residual(self) -> None:
        """Load the main encoder's current weights into the residual encoder."""
        own = self.residual_encoder.state_dict()
        self.residual_encoder.load_state_dict({k: v for k, v in self.backbone.state_dict().items() if k in own})

    def _residuals(self, x: Tensor) -> dict[int, Tensor]:
        bottleneck, skips = self.residual_encoder.encode(x)
        features = [*skips, bottleneck]
        residuals = {}
        for slot, index in enumerate(self.entangled_points):
            residual = features[index]
            residuals[index] = self.projections[slot](residual) if self.projections is not None else residual
        return residuals

    def forward(
        self, x: Tensor, return_features: bool = False, entangled: bool = True
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Derain ``x``.

        Args:
            x (Tensor): Rainy input (N, C, H, W).
            return_features (bool): Also return the entangled features ``Phi(x) + R(x)`` at each
                entanglement point (order: :attr:`feature_names`), for the feature loss.
            entangled (bool): ``False`` runs the backbone alone (training stage I, the MEMD
                baseline), skipping the residual encoder.

        Returns:
            The output, or ``(output, features)`` when ``return_features``.
        """
        if not entangled:
            bottleneck, skips = self.backbone.encode(x)
            features = [*skips, bottleneck]
        else:
            residuals = self._residuals(x)
            if self.inject == "encoder":

                def add_residual(index: int, feature: Tensor) -> Tensor:
                    return feature + residuals[index] if index in residuals else feature

                bottleneck, skips = self.backbone.encode(x, inject=add_residual)
                features = [*skips, bottleneck]
            else:
                bottleneck, skips = self.backbone.encode(x)
                features = [f + residuals[i] if i in residuals else f for i, f in enumerate([*skips, bottleneck])]
        out = self.backbone.decode(features[-1], features[:-1], x)
        if return_features:
            return out, [features[i] for i in self.entangled_points]
        return out

    def branch_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """Parameters of one branch: ``main_encoder``, ``decoder`` or ``residual_encoder``.

        The residual encoder's branch includes the zero-initialised projections.
        """
        _choice("branch", name, BRANCHES)
        if name == "residual_encoder":
            yield from self.residual_encoder.parameters()
            if self.projections is not None:
                yield from self.projections.parameters()
            return
        yield from part_parameters(self.backbone, "decoder" if name == "decoder" else "encoder")

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights, loadable by the plain backbone network (``type: MEMD``)."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load an ERLNet checkpoint, or a plain backbone checkpoint into the backbone.

        A plain backbone checkpoint (no ``backbone.``/``residual_encoder.`` keys) loads into the
        backbone, and with ``ren_init: main`` into the residual encoder as well.

        Raises:
            ValueError: the keys or shapes do not match, naming the offending keys.
        """
        own_prefixes = ("backbone.", "residual_encoder.", "projections.")
        plain = not any(key.startswith(own_prefixes) for key in state_dict)
        target = self.backbone if plain else super()
        try:
            result = target.load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            kind = f"a plain {self.backbone_options['type']} checkpoint" if plain else "an ERLNet checkpoint"
            raise ValueError(f"{kind} does not match network_g ({self.backbone_options}): {error}") from None
        if plain and self.ren_init == "main":
            self.copy_main_encoder_to_residual()
        return result
