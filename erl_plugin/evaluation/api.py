"""Derain from Python in one call: a trained network from its options and checkpoint.

Example:
    >>> import erl_plugin
    >>> derainer = erl_plugin.load("experiments/erl_rain100h/models/net_g_latest.pth")  # its run's options
    >>> clean = derainer(cv2.imread("rainy.png", cv2.IMREAD_UNCHANGED))  # any size, uint8 or uint16
    >>> batch = derainer(torch.rand(2, 3, 64, 64))  # RGB in [0, 1], as BasicSR's datasets give it
    >>> report = derainer.derain_paths(["my_photos/"], "derained/", progress=True)  # as erl-derain does
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from erl_plugin.engine.options import OptionsError
from erl_plugin.evaluation.evaluate import checkpoint_from_options, load_network
from erl_plugin.evaluation.inference import DerainReport, derain_paths, derain_tiled, tiled_forward
from erl_plugin.utils.speed import autocast, prepare_network, resolve_precision


class Derainer:
    """A trained deraining network (``network_g`` of ``options``), loaded once, applied to arrays and files.

    Args:
        options: The options file whose ``network_g`` built the checkpoint.
        checkpoint: A BasicSR checkpoint; default: the options' ``path.pretrain_network_g``.
        device: Where to run (``cpu``, ``cuda``, ``cuda:1``).
        tile: Tile side for large images (None: whole images); ``overlap`` between tiles.
        precision: ``fp32``, ``bf16`` or ``fp16`` (see :func:`erl_plugin.utils.speed.resolve_precision`).

    Raises:
        OptionsError: No checkpoint given and none in the options.
        ValueError: The checkpoint does not fit, holds non-finite weights, or is ERL-Net's teacher.
    """

    def __init__(
        self,
        options: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        tile: int | None = 512,
        overlap: int = 32,
        precision: str = "fp32",
    ) -> None:
        path, param_key = checkpoint_from_options(str(options), None if checkpoint is None else str(checkpoint))
        loaded = load_network(str(options), path, param_key)
        self.scored = loaded.scored  # which network of the options this is
        self.device = torch.device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.precision, self.tile, self.overlap = precision, tile, overlap
        self.net = prepare_network(loaded.net, self.device, False, None)

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Derain one OpenCV image (gray, BGR or BGRA; uint8 or uint16), returned in the same format; or a
        float tensor of RGB in ``[0, 1]``, ``(3, H, W)`` or ``(N, 3, H, W)``, returned as float32 on its
        device, clamped to ``[0, 1]``.

        Raises:
            ValueError: A tensor of another shape or dtype.
        """
        if not isinstance(image, torch.Tensor):
            return derain_tiled(self.net, image, self.tile, self.overlap, self.device, self.dtype)
        if image.ndim not in (3, 4) or image.shape[-3] != 3 or not image.is_floating_point():
            raise ValueError(
                f"a tensor to derain is float RGB in [0, 1], (3, H, W) or (N, 3, H, W); got {image.dtype} "
                f"{tuple(image.shape)}"
            )
        batch = image if image.ndim == 4 else image[None]
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = tiled_forward(self.net, batch.to(self.device, torch.float32), self.tile, self.overlap)
        out = out.float().clamp(0, 1).to(image.device)
        return out if image.ndim == 4 else out[0]

    def derain_paths(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        side_by_side: bool = False,
        progress: bool = False,
        score: bool = False,
    ) -> DerainReport:
        """Derain files and folders into ``out_dir`` as ``erl-derain`` does (:func:`derain_paths`); ``score``
        adds the no-reference NIQE of each input and output, as ``erl-derain --score``."""
        return derain_paths(
            self.net,
            inputs,
            out_dir,
            tile=self.tile,
            overlap=self.overlap,
            precision=self.precision,
            device=self.device,
            side_by_side=side_by_side,
            progress=progress,
            overwrite=overwrite,
            score=score,
        )


def load(
    options_or_checkpoint: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    **settings: object,
) -> Derainer:
    """A :class:`Derainer` from an options file (its ``path.pretrain_network_g``, or ``checkpoint``), or from a
    checkpoint that ``erl-train`` wrote: the options are the copy its run keeps (``experiments/<name>/*.yml``).

    ``settings`` are :class:`Derainer`'s: ``device``, ``tile``, ``overlap``, ``precision``.

    Raises:
        OptionsError: A checkpoint outside an experiment folder, or one whose folder keeps no single options file.
    """
    source = Path(options_or_checkpoint)
    if source.suffix.lower() in (".yml", ".yaml"):
        return Derainer(source, checkpoint, **settings)  # type: ignore[arg-type]
    models = source.resolve().parent  # experiments/<name>/models/<file>.pth
    experiment = models.parent
    kept = sorted(experiment.glob("*.yml")) if models.name == "models" else []
    if len(kept) != 1:
        found = ", ".join(p.name for p in kept) or "none"
        raise OptionsError(
            f"{source}: no options to build its network from (looked for one .yml in {experiment}, found {found}); "
            "give the options file: erl_plugin.load(OPTIONS, CHECKPOINT)"
        )
    return Derainer(kept[0], source, **settings)  # type: ignore[arg-type]
