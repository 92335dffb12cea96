"""Derain from Python in one call: a trained network from its options and checkpoint.

Example:
    >>> from erl_plugin import Derainer
    >>> derainer = Derainer("options/test/erl_rain100h.yml", "experiments/erl_rain100h/models/net_g_latest.pth")
    >>> clean = derainer(cv2.imread("rainy.png", cv2.IMREAD_UNCHANGED))  # any size, uint8 or uint16
    >>> report = derainer.derain_paths(["my_photos/"], "derained/")  # as erl-derain does
"""

import os
from collections.abc import Sequence

import numpy as np
import torch

from erl_plugin.evaluation.evaluate import checkpoint_from_options, load_network
from erl_plugin.evaluation.inference import DerainReport, derain_paths, derain_tiled
from erl_plugin.utils.speed import prepare_network, resolve_precision


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

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Derain one OpenCV image (gray, BGR or BGRA; uint8 or uint16), returned in the same format."""
        return derain_tiled(self.net, image, self.tile, self.overlap, self.device, self.dtype)

    def derain_paths(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        side_by_side: bool = False,
        progress: bool = False,
    ) -> DerainReport:
        """Derain files and folders into ``out_dir`` as ``erl-derain`` does (:func:`derain_paths`)."""
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
        )
