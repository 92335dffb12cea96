"""ERLNet: the entanglement wrapper of ERL-Net (Sec. 3, Eq. 2, Fig. 2) around any U-Net backbone.

A residual encoder (REN) with the structure of the backbone's encoder reads the same rainy input,
and its features are added to the main encoder's: ``Phi(x_r) + R(x_r)`` at the bottleneck (CLGD)
or at the bottleneck and every skip (MLGD). The backbone follows the encoder/decoder protocol of
:mod:`erl_plugin.archs.protocol`, natively (MEMD) or through an adapter
(:mod:`erl_plugin.archs.adapters`); the wrapper calls ``encode`` and ``decode`` explicitly, without
hooks, so it works the same under DDP and ``torch.compile``. A network with neither is wrapped at
the module paths ``entangle_at`` names, through forward hooks (:mod:`erl_plugin.archs.module_path`),
where hooks can do what is asked.

Choices the paper leaves open are options: ``inject`` (where the residual
goes), ``zero_init`` (zero-initialised 1x1 projections on each residual, so that a fresh wrapper
computes exactly what its backbone computes, the way ControlNet attaches to a pretrained U-Net)
and ``ren_init`` (REN starts from the main encoder's weights or from scratch).
"""

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from erl_plugin.archs.adapters import ADAPTERS
from erl_plugin.archs.module_path import EntangleAt, ModulePathBackbone
from erl_plugin.archs.pretrained import is_pretrained, load_pretrained, pretrained_architecture
from erl_plugin.archs.protocol import part_parameters, protocol_problems, remove_modules
from erl_plugin.utils.checkpoint import state_dict_mismatch

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


def _registered_name(name: str) -> str:
    """The name under which ``ARCH_REGISTRY`` holds ``name`` (BasicSR adds ``_basicsr`` to its own)."""
    for candidate in (name, f"{name}_basicsr"):
        if candidate in ARCH_REGISTRY:
            return candidate
    raise ValueError(f"backbone.type: {name!r} is not a registered network")


def build_backbone(
    options: Mapping[str, Any], entangle_at: Mapping[str, Any] | EntangleAt | None = None, weights: bool = True
) -> nn.Module:
    """Build a registered network from ``{type: ..., **kwargs}``, or a pretrained restorer from
    ``{checkpoint: PATH}`` (:mod:`erl_plugin.archs.pretrained`), as an encoder/decoder.

    ``type`` is BasicSR's name (``MEMD``) or mmengine's scoped one (``erl_plugin.MEMD``); next to
    ``checkpoint``, spandrel's name of the architecture (``NAFNet``). A network that follows the
    protocol is returned as it is; one with a registered adapter comes adapted (and checked against
    its own forward); with ``entangle_at``, any network comes as a
    :class:`~erl_plugin.archs.module_path.ModulePathBackbone`. ``weights=False`` builds a checkpoint's
    architecture freshly initialised.
    """
    if not isinstance(options, Mapping) or not ("type" in options or is_pretrained(options)):
        raise ValueError(f"backbone must be a mapping with a 'type' key (or a 'checkpoint'), got {options!r}")
    kwargs = dict(copy.deepcopy(options))
    if "type" in kwargs:
        kwargs["type"] = kwargs["type"].removeprefix(MMENGINE_SCOPE)
    if is_pretrained(kwargs):
        name, net = load_pretrained(kwargs, weights)
        subject = f"backbone.checkpoint: {kwargs['checkpoint']!r} holds a {name} (spandrel's name), which"
    else:
        name = _registered_name(kwargs.pop("type"))
        net = ARCH_REGISTRY.get(name)(**kwargs)
        subject = f"backbone.type: {name}"
    if entangle_at is not None:
        return ModulePathBackbone(net, EntangleAt.parse(entangle_at))
    problems = protocol_problems(net)
    if not problems:
        return net
    adapter = ADAPTERS.get(name) or ADAPTERS.get(name.removesuffix("_basicsr"))
    if adapter is None:
        raise TypeError(
            f"{subject} does not implement the encoder/decoder protocol "
            f"(erl_plugin.archs.protocol: {'; '.join(problems)}) and has no adapter (adapters exist for "
            f"{', '.join(sorted(ADAPTERS)) or 'none'}); register one for {name!r} (erl_plugin.archs.adapters) or "
            f"name its modules with network_g.entangle_at: {{bottleneck: ..., skips: [...]}} (its top-level "
            f"modules: {', '.join(n for n, _ in net.named_children())}; docs/wrap_your_network.md)"
        )
    adapted = adapter(net)
    adapted.verify()
    return adapted


@ARCH_REGISTRY.register()
class ERLNet(nn.Module):
    """A backbone U-Net plus a residual encoder entangled with its features.

    Args:
        backbone (dict): Options of the wrapped network, ``{type: MEMD, ...}``; any registered
            network that follows the encoder/decoder protocol. Or a pretrained restorer,
            ``{checkpoint: PATH}``, whose architecture spandrel recognises (``type`` then names it,
            filled in when missing; :mod:`erl_plugin.archs.pretrained`).
        entangle (str): ``clgd`` adds the residual at the bottleneck only, ``mlgd`` at the
            bottleneck and every skip. Default: ``mlgd`` (the paper's best).
        inject (str): ``decoder`` changes only the features handed to the decoder, leaving the main
            encoder's own path untouched; ``encoder`` lets each residual flow on into the deeper
            main-encoder layers. Default: ``decoder``.
        zero_init (bool): Put a zero-initialised 1x1 conv on each residual, so a fresh wrapper
            computes exactly what the backbone computes. ``False`` is the paper's plain sum.
            Default: True.
        ren_init (str): ``main`` starts the residual encoder from the main encoder's weights: when
            built, when a backbone checkpoint is loaded, and (ERLModel) when the stage that first
            trains it begins, from the main encoder trained so far. ``random`` keeps its own
            initialisation. Default: ``main``.
        entangle_at (dict | None): For a network with neither the protocol nor an adapter: the
            module paths ``{bottleneck: 'path.to.module', skips: ['...', ...]}`` (skips from the
            highest resolution down) where forward hooks entangle it. MLGD with ``inject: decoder``
            is refused where a skip also feeds the deeper encoder. Default: None.
    """

    def __init__(
        self,
        backbone: Mapping[str, Any],
        entangle: str = "mlgd",
        inject: str = "decoder",
        zero_init: bool = True,
        ren_init: str = "main",
        entangle_at: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.entangle = _choice("entangle", entangle, ENTANGLE)
        self.inject = _choice("inject", inject, INJECT)
        self.ren_init = _choice("ren_init", ren_init, REN_INIT)
        if not isinstance(backbone, Mapping) or not ("type" in backbone or is_pretrained(backbone)):
            raise ValueError(f"backbone must be a mapping with a 'type' key (or a 'checkpoint'), got {backbone!r}")
        if "type" not in backbone:
            backbone = {**backbone, "type": pretrained_architecture(backbone)}
        self.backbone_options = {**copy.deepcopy(backbone), "type": backbone["type"].removeprefix(MMENGINE_SCOPE)}
        self.entangle_at = None if entangle_at is None else EntangleAt.parse(entangle_at)
        self.backbone = self.new_backbone()
        if self.hooked and entangle == "mlgd" and inject == "decoder":
            self._refuse_hooked_skips()
        self.residual_encoder = self.new_backbone(weights=False)  # ren_init: main copies the main encoder in
        remove_modules(self.residual_encoder, self.backbone.decoder_modules)
        if self.hooked:
            self.residual_encoder.check_encoder()
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
        self.residual_from_checkpoint = False
        """Whether an ERLNet checkpoint has loaded the residual encoder (training then keeps it)."""

    @property
    def hooked(self) -> bool:
        """Whether the backbone is entangled through forward hooks (``entangle_at``)."""
        return self.entangle_at is not None

    def new_backbone(self, weights: bool = True) -> nn.Module:
        """A fresh backbone of this wrapper's structure (also the teacher's), built from its options;
        ``weights=False``: without a ``backbone.checkpoint``'s weights, freshly initialised."""
        return build_backbone(self.backbone_options, self.entangle_at, weights)

    def _refuse_hooked_skips(self) -> None:
        feeding = self.backbone.skips_feeding_deeper()
        if feeding:
            details = "; ".join(
                f"{path!r} also reaches {', '.join(map(repr, deeper))}" for path, deeper in feeding.items()
            )
            raise ValueError(
                f"entangle_at.skips: a forward hook cannot add a residual to a skip alone where the skip also "
                f"feeds the deeper encoder ({details}), which entangle: mlgd with inject: decoder needs. "
                f"Use inject: encoder (the residuals flow on into the deeper encoder too), entangle: clgd, "
                f"or an adapter for {self.backbone_options['type']} (docs/wrap_your_network.md)"
            )

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

    def _adder(self, residuals: dict[int, Tensor]) -> Callable[[int, Tensor], Tensor]:
        """``inject(i, feature)`` adding the residual of point ``i``, checking that the shapes agree."""

        def add_residual(index: int, feature: Tensor) -> Tensor:
            if index not in residuals:
                return feature
            residual = residuals[index]
            if residual.shape != feature.shape:
                point = self.backbone.feature_info[index]
                where = f" (module {self.entangle_at.paths[index]!r})" if self.hooked else ""
                raise ValueError(
                    f"{point.name}{where}: the backbone's feature has shape {tuple(feature.shape)} but the residual "
                    f"encoder gives {tuple(residual.shape)} (feature_info: {point.num_chs} channels at stride "
                    f"{point.reduction})"
                )
            return feature + residual

        return add_residual

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
        inject = self._adder(self._residuals(x)) if entangled else None
        if self.hooked:
            if inject is None and not return_features:
                return self.backbone(x)
            out, features = self.backbone.run(x, inject=inject)
        else:
            if inject is not None and self.inject == "encoder":
                bottleneck, skips = self.backbone.encode(x, inject=inject)
                features = [*skips, bottleneck]
            else:
                bottleneck, skips = self.backbone.encode(x)
                features = [*skips, bottleneck]
                if inject is not None:
                    features = [inject(i, feature) for i, feature in enumerate(features)]
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

    @staticmethod
    def _is_plain(state_dict: Mapping[str, Any]) -> bool:
        """A plain backbone checkpoint: none of ERLNet's own top-level module names."""
        return not any(key.startswith(("backbone.", "residual_encoder.", "projections.")) for key in state_dict)

    def partial_load_note(self, state_dict: Mapping[str, Any]) -> str | None:
        """One line on what a plain backbone checkpoint loads and what starts fresh; None for an ERLNet one."""
        if not self._is_plain(state_dict):
            return None
        residual = "a copy of the main encoder (ren_init: main)" if self.ren_init == "main" else "fresh weights"
        projections = "; the projections start fresh" if self.projections is not None else ""
        return (
            f"a plain {self.backbone_options['type']} checkpoint ({len(state_dict)} tensors) loads into the backbone; "
            f"the residual encoder starts as {residual}{projections}"
        )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load an ERLNet checkpoint, or a plain backbone checkpoint into the backbone.

        A plain backbone checkpoint (no ``backbone.``/``residual_encoder.`` keys) loads into the
        backbone, and with ``ren_init: main`` into the residual encoder as well.

        Raises:
            ValueError: the keys or shapes do not match, naming the offending keys.
        """
        plain = self._is_plain(state_dict)
        target = self.backbone if plain else super()
        try:
            result = target.load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError:
            kind = f"a plain {self.backbone_options['type']} checkpoint" if plain else "an ERLNet checkpoint"
            details = state_dict_mismatch(self.backbone if plain else self, dict(state_dict))
            raise ValueError(f"{kind} does not match network_g ({self.backbone_options}): {details}") from None
        if plain and self.ren_init == "main":
            self.copy_main_encoder_to_residual()
        self.residual_from_checkpoint = self.residual_from_checkpoint or not plain
        return result
