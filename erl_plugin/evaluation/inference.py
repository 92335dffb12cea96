"""Derain images of any size with a trained network, tile by tile when they are large.

Large images are cut into overlapping tiles whose outputs are blended with a cosine feather over
the overlap, so memory stays bounded and no seams show. Every image keeps its format: 8-bit stays
8-bit, 16-bit stays 16-bit, grayscale stays grayscale and an alpha channel is passed through.

Example:
    >>> net = load_network("options/erl_demo.yml", "experiments/erl_demo/models/net_g_latest.pth").net
    >>> report = derain_paths(net, ["photos/"], "photos_derained", tile=512, precision="bf16", channels_last=True)
    >>> print(report.summary())
"""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from erl_plugin.archs.memd_arch import pad_to_multiple
from erl_plugin.archs.protocol import FeaturePoint
from erl_plugin.data.images import ImageFileError, read_image
from erl_plugin.data.layouts import IMAGE_EXTENSIONS, scan_images
from erl_plugin.metrics.no_reference import NiqeScores
from erl_plugin.utils.outputs import OutputFolder
from erl_plugin.utils.speed import (
    PRECISIONS,
    autocast,
    check_compile,
    memory_format,
    prepare_network,
    resolve_precision,
)

__all__ = [
    "PRECISIONS",
    "DerainReport",
    "NIQE_FILES",
    "UnsupportedImageError",
    "bgr8",
    "collect_images",
    "derain_paths",
    "derain_tiled",
    "network_grid",
    "resolve_precision",
    "tiled_forward",
]

_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}

NIQE_FILES = ("niqe.csv", "niqe.md")
"""What :func:`derain_paths` writes with ``score``: NIQE of every input and output, per image and the means."""


class UnsupportedImageError(ValueError):
    """An image decodes but has a pixel type or channel count the networks cannot take."""


@dataclass
class DerainReport:
    """What :func:`derain_paths` did: files written, files skipped with the reason, settings used, and with
    ``score`` the NIQE of the inputs and outputs."""

    device: str
    precision: str
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    niqe: NiqeScores | None = None

    def summary(self) -> str:
        """One line of counts and settings, then one line per skipped file."""
        lines = [
            f"{len(self.written)} derained, {len(self.skipped)} skipped "
            f"(device {self.device}, precision {self.precision})"
        ]
        lines += [f"skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _check_tiling(tile: int | None, overlap: int, align: int = 1) -> None:
    if tile is not None and not (isinstance(tile, int) and tile >= max(align, 1)):
        raise ValueError(f"tile must be None or an integer >= {max(align, 1)} (the network's grid), got {tile!r}")
    if not (isinstance(overlap, int) and overlap >= 0) or (tile is not None and overlap >= tile):
        raise ValueError(f"overlap must be an integer in [0, tile), got overlap={overlap!r} with tile={tile!r}")


def _starts(length: int, tile: int, stride: int, align: int) -> list[tuple[int, int]]:
    """``(origin, size)`` of the tiles along one axis.

    Origins are multiples of ``align`` every ``stride`` pixels (rounded down to ``align``); the last
    tile starts at the last such multiple that leaves it at least ``tile`` long and ends at the border.
    """
    if length <= tile:
        return [(0, length)]
    stride = max(align, stride // align * align)
    last = (length - tile) // align * align
    return [(start, tile) for start in range(0, last, stride)] + [(last, length - last)]


def _feather(start: int, size: int, length: int, overlap: int) -> Tensor:
    """Blend weights along one axis: a cosine ramp over ``overlap`` on sides that have a neighbour."""
    weight = torch.ones(size)
    ramp_size = min(overlap, size)
    if ramp_size == 0:
        return weight
    # Strictly positive, so every pixel has a non-zero total weight.
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(ramp_size) + 0.5) / ramp_size)
    if start > 0:
        weight[:ramp_size] = torch.minimum(weight[:ramp_size], ramp)
    if start + size < length:
        weight[-ramp_size:] = torch.minimum(weight[-ramp_size:], ramp.flip(0))
    return weight


def network_grid(net: nn.Module) -> int:
    """The pixel grid a network down-samples on: the deepest stride its ``feature_info`` lists, else 1."""
    strides = [
        point.reduction
        for module in net.modules()
        for point in getattr(module, "feature_info", None) or []
        if isinstance(point, FeaturePoint)
    ]
    return max(strides, default=1)


def tiled_forward(
    net: nn.Module, x: Tensor, tile: int | None = 512, overlap: int = 32, align: int | None = None
) -> Tensor:
    """Run ``net`` on a ``(N, C, H, W)`` batch, whole or in overlapping feathered tiles.

    The batch goes through whole when ``tile`` is None or both sides are at most ``tile``. Otherwise
    tiles of ``tile`` x ``tile`` start every ``tile - overlap`` pixels and their outputs are averaged
    with weights that fall off (cosine) over the overlap. Tile origins are multiples of ``align``, so
    a network that pools sees the pixel grid it sees on the whole image; the last tile of each row and
    column is flush with the border and up to ``align - 1`` pixels longer than ``tile``. The input is
    first padded (reflect, bottom and right) to a multiple of ``align`` and the output cropped back,
    so networks that need sizes on their grid take any size.

    Args:
        net: A network whose output has the input's height and width.
        x: Input batch, on the network's device.
        tile: Tile side in pixels, or None for the whole image. Default: 512.
        overlap: Pixels shared by neighbouring tiles, ``0 <= overlap < tile``. Default: 32.
        align: Tile origin multiple; default: :func:`network_grid` (8 for a default MEMD).

    Returns:
        The network's output for ``x``, in float32.
    """
    align = network_grid(net) if align is None else align
    _check_tiling(tile, overlap, align)
    original_height, original_width = x.shape[-2:]
    x = pad_to_multiple(x, align)  # for networks that do not pad to their grid themselves
    height, width = x.shape[-2:]
    if tile is None or (height <= tile and width <= tile):
        return net(x).float()[..., :original_height, :original_width]
    out: Tensor | None = None
    total = torch.zeros(height, width, device=x.device)
    for top, rows in _starts(height, tile, tile - overlap, align):
        weight_y = _feather(top, rows, height, overlap).to(x.device)
        for left, cols in _starts(width, tile, tile - overlap, align):
            weight = weight_y[:, None] * _feather(left, cols, width, overlap).to(x.device)[None, :]
            piece = net(x[..., top : top + rows, left : left + cols]).float()
            if out is None:
                out = torch.zeros(*piece.shape[:2], height, width, device=x.device)
            out[..., top : top + rows, left : left + cols] += piece * weight
            total[top : top + rows, left : left + cols] += weight
    assert out is not None  # at least one tile ran
    return (out / total)[..., :original_height, :original_width]


@torch.inference_mode()
def derain_tiled(
    net: nn.Module,
    image: np.ndarray,
    tile: int | None = 512,
    overlap: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Derain one OpenCV image (as ``cv2.IMREAD_UNCHANGED`` reads it), keeping its format.

    uint8 and uint16 images are taken; grayscale (``(H, W)`` or ``(H, W, 1)``), BGR and BGRA. The
    network sees RGB in ``[0, 1]``: grayscale is repeated to three channels and the output turned
    back into gray; alpha is returned untouched.

    Args:
        net: A network mapping RGB to RGB of the same size, already on ``device``.
        image: The image.
        tile: Tile side, or None to run the whole image at once (see :func:`tiled_forward`).
        overlap: Overlap between tiles in pixels.
        device: Where to run; default: the device of the network's parameters.
        dtype: Autocast dtype as :func:`~erl_plugin.utils.speed.resolve_precision` gives it for
            ``device`` (it falls back to None, fp32, where a precision cannot run).
        channels_last: Feed the network NHWC memory (for a network converted to channels_last).

    Returns:
        The derained image, with the input's dtype and shape.

    Raises:
        UnsupportedImageError: For other pixel types or channel counts.
    """
    scale = _SCALES.get(image.dtype)
    if scale is None:
        raise UnsupportedImageError(f"pixel type {image.dtype} is not supported (uint8 or uint16)")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise UnsupportedImageError(f"image of shape {image.shape} is not gray, BGR or BGRA")
    color = image.reshape(image.shape[:2]) if channels == 1 else image[..., :3]
    bgr = color.astype(np.float32) / scale
    if channels == 1:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1)))[None].to(device)
    x = memory_format(x, channels_last)
    with autocast(device, dtype):
        y = tiled_forward(net, x, tile, overlap)
    out = y[0].clamp(0, 1).cpu().numpy().transpose(1, 2, 0)[..., ::-1]
    if channels == 1:
        out = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_BGR2GRAY).reshape(image.shape)
    out = np.rint(out * scale).astype(image.dtype)
    if channels == 4:
        out = np.concatenate([out, image[..., 3:]], axis=2)
    return out


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand inputs into image files: files as given, folders to their images (sorted, not recursive).

    A folder contributes the files whose extension is one of :data:`IMAGE_EXTENSIONS` (any case), as
    :func:`~erl_plugin.data.layouts.scan_images` lists them without subfolders.

    Raises:
        FileNotFoundError: If an input does not exist.
        ValueError: If nothing is found.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += [item / name for name in scan_images(item, recursive=False) if (item / name).is_file()]
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return files


def _plan(files: Sequence[Path], out_dir: Path, compare: bool) -> list[tuple[Path, Path, Path | None]]:
    """Pair every input with its output (and comparison) path, refusing any overwrite of an input."""
    target = out_dir.resolve()
    sources = {file.resolve() for file in files}
    taken: dict[Path, Path] = {}
    plan: list[tuple[Path, Path, Path | None]] = []
    for file in files:
        if file.resolve().parent == target:
            raise ValueError(f"output folder {out_dir} is the folder of input {file}; choose another --output")
        outputs = [out_dir / file.name] + ([out_dir / f"{file.stem}_compare.png"] if compare else [])
        for output in outputs:
            if output.resolve() in sources:
                raise ValueError(f"output {output} would overwrite an input")
            if output.resolve() in taken:
                raise ValueError(f"{file} and {taken[output.resolve()]} would both be written to {output}")
            taken[output.resolve()] = file
        plan.append((file, outputs[0], outputs[1] if compare else None))
    return plan


def bgr8(image: np.ndarray) -> np.ndarray:
    """An 8-bit BGR view of any image :func:`derain_tiled` takes: 16-bit divided by 257 and rounded, gray
    repeated to three channels, alpha dropped (for comparison pictures and NIQE)."""
    if image.dtype == np.uint16:
        image = np.rint(image / 257.0).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[..., :3])


def derain_paths(
    net: nn.Module,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    tile: int | None = 512,
    overlap: int = 32,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    compile: bool | dict | None = None,
    side_by_side: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    score: bool = False,
) -> DerainReport:
    """Derain image files and folders into ``out_dir``, each under its own file name and format.

    Unreadable or unsupported files (empty, truncated, not an image, float pixels...) are skipped and
    listed in the report; the others go on. Nothing is written when the plan would overwrite an
    input: ``out_dir`` may not be the folder of any input, and no two inputs may share an output.

    Args:
        net: The network; it is moved to ``device`` (and converted and compiled) in place.
        inputs: Image files and folders (see :func:`collect_images`).
        out_dir: Output folder, created if needed.
        tile: Tile side, or None for whole images (see :func:`tiled_forward`). Default: 512.
        overlap: Overlap between tiles. Default: 32.
        precision: ``fp32`` (or ``none``), ``bf16`` or ``fp16``: autocast on CUDA; on the CPU bf16
            runs and fp16 warns and runs fp32 (see :func:`~erl_plugin.utils.speed.resolve_precision`).
        device: Where to run. Default: ``cpu``.
        channels_last: Run the network in channels_last (NHWC) memory order.
        compile: ``torch.compile`` the network (true, or a mapping of
            :data:`~erl_plugin.utils.speed.COMPILE_KEYS`); where unavailable it warns and runs eagerly.
        side_by_side: Also write ``<stem>_compare.png`` (rainy | derained, 8-bit).
        progress: Show a progress bar.
        overwrite: Replace outputs an earlier run wrote into ``out_dir`` (never a file of the user's there;
            see :class:`~erl_plugin.utils.outputs.OutputFolder`).
        score: Also score every input and its output with NIQE, no-reference
            (:data:`~erl_plugin.metrics.no_reference.NIQE_PROTOCOL`, on :func:`bgr8` views), into
            :data:`NIQE_FILES`; an image too small or too flat for NIQE is derained and listed as not scored.

    Returns:
        The files written and skipped, the device and precision actually used, and the NIQE scores.
    """
    _check_tiling(tile, overlap)
    dtype = resolve_precision(precision, device)
    with OutputFolder(out_dir, tool="derain", overwrite=overwrite, inputs=inputs) as out:
        plan = _plan(collect_images(inputs), Path(out_dir), side_by_side)
        names = [output.name for _, *outputs in plan for output in outputs if output is not None]
        out.claim([*names, *(NIQE_FILES if score else ())])
        compile_options = check_compile(compile)
        net = prepare_network(net, torch.device(device), channels_last, compile_options)
        report = DerainReport(device=str(device), precision=precision if dtype is not None else "fp32")
        report.niqe = NiqeScores(["rainy input", "derained"]) if score else None
        for source, output, compare in tqdm(plan, desc="derain", unit="image", disable=not progress):
            try:
                image = read_image(source)
                result = derain_tiled(net, image, tile, overlap, device, dtype, channels_last)
            except (ImageFileError, UnsupportedImageError) as error:
                report.skipped.append((source, str(error)))
                continue
            report.written.append(out.write_image(output.name, result))
            if compare is not None:
                out.write_image(compare.name, cv2.hconcat([bgr8(image), bgr8(result)]))
            if report.niqe is not None:
                report.niqe.add(str(source), [bgr8(image), bgr8(result)])
        if report.niqe is not None:
            out.write_text("niqe.csv", report.niqe.csv())
            out.write_text("niqe.md", report.niqe.markdown(f"Inputs derained into {out_dir}") + "\n")
    return report
