"""Synthetic rain streaks and a paired dataset in the Rain100H layout, so training runs without a download.

Rain model: each layer seeds random impulses and smears them with a motion-blur line kernel (optionally
softened by a Gaussian streak blur); layers are composited on the clean image with a blend mode (screen
``1 - (1 - clean)(1 - streaks)``, additive with clipping, or an alpha composite of a grey streak colour),
then an optional haze blends towards a bright airlight (grey or slightly tinted), and mild sensor noise and
JPEG compression may follow. A :class:`RainPreset` names a domain of such renderings: the ranges every
parameter is drawn from. ``light`` and ``heavy`` are the fixed-data presets (screen blend, grey haze, no
blur, noise or JPEG); ``wide`` is the training domain of the on-the-fly dataset and ``shifted`` the
out-of-domain half of the generalization test split. Everything is deterministic given a
``numpy.random.Generator``.

Example:
    >>> rng = np.random.default_rng(0)
    >>> rainy = add_rain(clean_bgr, "heavy", rng)
    >>> summary = synthesize_dataset("datasets/synthetic_rain", preset="heavy", seed=0, lmdb=True)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data
from tqdm import tqdm

from erl_plugin.data.images import ImageFileError, as_bgr, read_image
from erl_plugin.data.layouts import IMAGE_EXTENSIONS, is_image_name, raintrainh_pairs
from erl_plugin.data.lmdb_writer import write_paired_lmdb
from erl_plugin.utils.outputs import staged_directory

__all__ = [
    "BLEND_MODES",
    "DEFAULT_SOURCES",
    "PRESETS",
    "RainDataError",
    "RainPreset",
    "StreakLayer",
    "add_rain",
    "fit_view",
    "load_source_images",
    "read_photos",
    "render_streaks",
    "sample_layers",
    "synthesize_dataset",
    "synthesize_lmdb",
    "write_png",
]


# Natural photographs shipped inside scikit-image's package folder (no download). Sorted, the last two
# (motorcycle_left, rocket) are colour photos, which makes them the default test split.
DEFAULT_SOURCES = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "motorcycle_left.png",
    "rocket.jpg",
)

_DIMENSION_MULTIPLE = 8  # test images are cropped to multiples of 8 so encoder-decoders need no padding


class RainDataError(ValueError):
    """Bad input for rain synthesis: a missing/empty folder, an unreadable image, too few sources."""


@dataclass(frozen=True)
class StreakLayer:
    """One layer of parallel rain streaks.

    Attributes:
        angle: Streak direction in degrees from vertical; positive tilts the top of a streak to the right.
        length: Streak length in pixels (> 0).
        width: Streak thickness in pixels (integer >= 1).
        density: Fraction of pixels that seed a streak, in [0, 1].
        intensity: Peak brightness of an isolated streak, in [0, 1].
        blur: Standard deviation of a Gaussian blur of the rendered layer, pixels (>= 0; 0 = none).
    """

    angle: float
    length: float
    width: int
    density: float
    intensity: float
    blur: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.angle):
            raise ValueError(f"StreakLayer.angle must be finite, got {self.angle!r}")
        if not self.length > 0:
            raise ValueError(f"StreakLayer.length must be > 0 pixels, got {self.length!r}")
        if int(self.width) != self.width or self.width < 1:
            raise ValueError(f"StreakLayer.width must be an integer >= 1, got {self.width!r}")
        for name in ("density", "intensity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"StreakLayer.{name} must be in [0, 1], got {value!r}")
        if not self.blur >= 0:
            raise ValueError(f"StreakLayer.blur must be >= 0 pixels, got {self.blur!r}")


Range = tuple[float, float]
BLEND_MODES = ("screen", "additive", "alpha")


@dataclass(frozen=True)
class RainPreset:
    """Ranges from which :func:`sample_layers` and :func:`add_rain` draw one rainy image: a rain domain.

    Every range is ``(low, high)``, sampled uniformly; ``width``, ``layers`` and ``jpeg_quality`` are
    integer ranges with both ends included. All layers of one image share a dominant angle drawn from
    ``angle`` (negated with probability 1/2 when ``mirror_angle``); each layer deviates from it by at most
    ``angle_jitter`` degrees. The fields after ``haze`` default to the fixed-data presets' rendering
    (screen blend, grey airlight in [0.8, 1], no blur, noise or JPEG), and an option left at its default
    draws nothing, so ``light`` and ``heavy`` give the same bytes as before those options existed.

    Attributes:
        name: Preset name.
        angle: Dominant streak angle range, degrees from vertical.
        angle_jitter: Per-layer deviation from the dominant angle, degrees (>= 0).
        length: Streak length range, pixels.
        width: Streak thickness range, pixels.
        density: Seed density range, fraction of pixels.
        intensity: Peak streak brightness range.
        layers: Number of layers per image.
        haze: Haze strength range, 0 = none.
        blend: Blend modes one is drawn from, each from :data:`BLEND_MODES`.
        blend_per_layer: Draw a blend mode per layer rather than one per image.
        mirror_angle: Negate the dominant angle with probability 1/2 (for ranges such as 40..60 degrees
            that should cover both directions).
        streak_blur: Per-layer Gaussian blur range, pixels (0 = sharp streaks).
        streak_colour: Grey level range of the streaks in the ``alpha`` blend.
        airlight: Grey level range of the haze's airlight.
        airlight_tint: Largest per-channel deviation of the airlight from grey.
        noise: Standard deviation range of additive Gaussian sensor noise (0 = none), in [0, 1] units.
        jpeg_probability: Probability that the rainy image is JPEG-compressed.
        jpeg_quality: JPEG quality range when it is.
    """

    name: str
    angle: Range
    angle_jitter: float
    length: Range
    width: tuple[int, int]
    density: Range
    intensity: Range
    layers: tuple[int, int]
    haze: Range
    blend: tuple[str, ...] = ("screen",)
    blend_per_layer: bool = False
    mirror_angle: bool = False
    streak_blur: Range = (0.0, 0.0)
    streak_colour: Range = (0.75, 0.95)
    airlight: Range = (0.8, 1.0)
    airlight_tint: float = 0.0
    noise: Range = (0.0, 0.0)
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (70, 95)

    def __post_init__(self) -> None:
        bounds = {
            "angle": (-90.0, 90.0),
            "length": (1e-6, math.inf),
            "width": (1, math.inf),
            "density": (0.0, 1.0),
            "intensity": (0.0, 1.0),
            "layers": (1, math.inf),
            "haze": (0.0, 1.0),
            "streak_blur": (0.0, math.inf),
            "streak_colour": (0.0, 1.0),
            "airlight": (0.0, 1.0),
            "noise": (0.0, 1.0),
            "jpeg_quality": (1, 100),
        }
        for field, (lowest, highest) in bounds.items():
            value = getattr(self, field)
            if not isinstance(value, tuple | list) or len(value) != 2:
                raise ValueError(f"RainPreset {self.name!r}: {field}={value!r} must be a (low, high) pair")
            low, high = value
            if not lowest <= low <= high <= highest:
                raise ValueError(
                    f"RainPreset {self.name!r}: {field}=({low}, {high}) must satisfy "
                    f"{lowest} <= low <= high <= {highest}"
                )
        for field in ("width", "layers", "jpeg_quality"):
            if any(int(v) != v for v in getattr(self, field)):
                raise ValueError(f"RainPreset {self.name!r}: {field} must be integers, got {getattr(self, field)}")
        for field in ("angle_jitter", "airlight_tint"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"RainPreset {self.name!r}: {field} must be >= 0, got {getattr(self, field)}")
        if not 0.0 <= self.jpeg_probability <= 1.0:
            raise ValueError(
                f"RainPreset {self.name!r}: jpeg_probability must be in [0, 1], got {self.jpeg_probability}"
            )
        unknown = [mode for mode in self.blend if mode not in BLEND_MODES]
        if not self.blend or unknown:
            raise ValueError(
                f"RainPreset {self.name!r}: blend={list(self.blend)!r} must list blend modes from {list(BLEND_MODES)}"
            )

    def replace(self, **changes: Any) -> RainPreset:
        """A copy with some fields changed (lists become tuples); unknown fields are refused by name."""
        fields = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"unknown rain option(s) {unknown}; allowed: {sorted(fields - {'name'})}")
        changes = {key: tuple(value) if isinstance(value, list) else value for key, value in changes.items()}
        return dataclasses.replace(self, **changes)


# Calibrated on the scikit-image photos (Y-channel PSNR of rainy vs clean, basicsr protocol): light
# averages about 26 dB, heavy about 16 dB, close to Rain100L / Rain100H inputs. Heavy seeds fewer streaks
# per layer than light's drizzle, but they are 2-4x longer, wider, brighter and come in 3-4 layers, so they
# cover far more of the image. ``wide`` spans drizzle to downpour with every blend mode, blur, tinted haze,
# noise and JPEG (the on-the-fly training domain); ``shifted`` lies partly outside it: steeper angles,
# longer and wider streaks, a blend mode per layer and denser haze.
PRESETS: dict[str, RainPreset] = {
    "light": RainPreset(
        name="light",
        angle=(-20.0, 20.0),
        angle_jitter=5.0,
        length=(6.0, 15.0),
        width=(1, 1),
        density=(0.004, 0.01),
        intensity=(0.25, 0.45),
        layers=(1, 2),
        haze=(0.0, 0.0),
    ),
    "heavy": RainPreset(
        name="heavy",
        angle=(-20.0, 20.0),
        angle_jitter=10.0,
        length=(20.0, 40.0),
        width=(1, 2),
        density=(0.001, 0.0022),
        intensity=(0.4, 0.7),
        layers=(3, 4),
        haze=(0.05, 0.2),
    ),
    "wide": RainPreset(
        name="wide",
        angle=(-35.0, 35.0),
        angle_jitter=8.0,
        length=(8.0, 45.0),
        width=(1, 3),
        density=(0.0003, 0.0022),
        intensity=(0.25, 0.75),
        layers=(1, 4),
        haze=(0.0, 0.3),
        blend=BLEND_MODES,
        streak_blur=(0.0, 1.0),
        airlight_tint=0.05,
        noise=(0.0, 0.01),
        jpeg_probability=0.3,
        jpeg_quality=(75, 95),
    ),
    "shifted": RainPreset(
        name="shifted",
        angle=(40.0, 60.0),
        angle_jitter=5.0,
        length=(45.0, 80.0),
        width=(2, 3),
        density=(0.0002, 0.0006),
        intensity=(0.4, 0.8),
        layers=(2, 3),
        haze=(0.15, 0.35),
        blend=BLEND_MODES,
        blend_per_layer=True,
        mirror_angle=True,
        streak_blur=(0.5, 1.5),
        airlight_tint=0.08,
        noise=(0.0, 0.01),
        jpeg_probability=0.3,
        jpeg_quality=(60, 90),
    ),
}


def sample_layers(preset: RainPreset, rng: np.random.Generator) -> tuple[list[StreakLayer], float]:
    """Draw the streak layers and haze strength of one rainy image from ``preset``."""
    count = int(rng.integers(preset.layers[0], preset.layers[1] + 1))
    dominant = rng.uniform(*preset.angle)
    if preset.mirror_angle and rng.random() < 0.5:
        dominant = -dominant
    layers = []
    for _ in range(count):
        layer = StreakLayer(
            angle=float(dominant + rng.uniform(-preset.angle_jitter, preset.angle_jitter)),
            length=float(rng.uniform(*preset.length)),
            width=int(rng.integers(preset.width[0], preset.width[1] + 1)),
            density=float(rng.uniform(*preset.density)),
            intensity=float(rng.uniform(*preset.intensity)),
        )
        if preset.streak_blur[1] > 0:
            layer = dataclasses.replace(layer, blur=float(rng.uniform(*preset.streak_blur)))
        layers.append(layer)
    return layers, float(rng.uniform(*preset.haze))


def _motion_kernel(layer: StreakLayer) -> np.ndarray:
    """A line of ``layer.length`` at ``layer.angle``, ``layer.width`` thick, scaled to peak 1."""
    size = 2 * math.ceil((layer.length + layer.width) / 2) + 1
    centre = size / 2
    theta = math.radians(layer.angle)
    dx, dy = 0.5 * layer.length * math.sin(theta), 0.5 * layer.length * math.cos(theta)
    fixed = 16  # cv2.line takes sub-pixel end points as fixed point with 4 fractional bits
    top = (round((centre + dx) * fixed), round((centre - dy) * fixed))
    bottom = (round((centre - dx) * fixed), round((centre + dy) * fixed))
    kernel = np.zeros((size, size), np.float32)
    cv2.line(kernel, top, bottom, 1.0, thickness=int(layer.width), lineType=cv2.LINE_AA, shift=4)
    return kernel / kernel.max()


def render_streaks(shape_hw: tuple[int, int], layer: StreakLayer, rng: np.random.Generator) -> np.ndarray:
    """Render one streak layer.

    Seeds impulses of random brightness in [0.5, 1] where ``rng.random() < density`` and smears them
    with the layer's motion kernel. The kernel peaks at 1, so an isolated streak peaks at its seed
    brightness times ``intensity``; overlapping streaks add up and are clipped at 1. Seeding covers a
    margin around the image so streaks enter from outside as often as they start inside.

    Args:
        shape_hw: Output height and width.
        layer: Streak parameters.
        rng: Random generator.

    Returns:
        float32 array of shape ``shape_hw`` in [0, 1].
    """
    height, width = shape_hw
    kernel = _motion_kernel(layer)
    margin = kernel.shape[0] // 2
    padded = (height + 2 * margin, width + 2 * margin)
    seeds = np.flatnonzero(rng.random(padded[0] * padded[1]) < layer.density)
    impulses = np.zeros(padded, np.float32)
    impulses.flat[seeds] = rng.uniform(0.5, 1.0, seeds.size)
    streaks = cv2.filter2D(impulses, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    if layer.blur > 0:
        streaks = cv2.GaussianBlur(streaks, (0, 0), layer.blur, borderType=cv2.BORDER_CONSTANT)
    streaks = streaks[margin : margin + height, margin : margin + width] * layer.intensity
    return np.clip(streaks, 0.0, 1.0)


def add_rain(
    clean: np.ndarray,
    rain: str | RainPreset | Sequence[StreakLayer],
    rng: np.random.Generator,
    *,
    haze: float = 0.0,
) -> np.ndarray:
    """Composite rain streaks (and haze, noise, JPEG) onto a clean image.

    Args:
        clean: uint8 HxWx3 image, RGB or BGR.
        rain: A preset (name in :data:`PRESETS` or a :class:`RainPreset`) from which layers, blend, haze,
            noise and JPEG are drawn, or explicit layers (screen blend, grey airlight).
        rng: Random generator; the same generator state gives identical bytes.
        haze: Haze strength in [0, 1] for explicit layers. Presets sample their own, so it must stay 0.

    Returns:
        The rainy uint8 image, same shape as ``clean``.
    """
    if not isinstance(clean, np.ndarray) or clean.dtype != np.uint8 or clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(
            f"clean must be a uint8 HxWx3 array, got {getattr(clean, 'dtype', type(clean).__name__)} "
            f"{getattr(clean, 'shape', '')}"
        )
    if not 0.0 <= haze <= 1.0:
        raise ValueError(f"haze must be in [0, 1], got {haze!r}")
    if isinstance(rain, str):
        rain = _preset(rain)
    if isinstance(rain, RainPreset):
        if haze:
            raise ValueError(f"haze={haze} is only for explicit layers; preset {rain.name!r} samples its own")
        preset = rain
        layers, haze = sample_layers(preset, rng)
    else:
        preset, layers = PRESETS["heavy"], list(rain)  # heavy renders with the defaults: screen, grey airlight
    modes = _draw_blend_modes(preset, len(layers), rng)
    colour = float(rng.uniform(*preset.streak_colour)) if "alpha" in modes else 1.0
    maps = [render_streaks(clean.shape[:2], layer, rng) for layer in layers]
    rainy = _composite(clean.astype(np.float32) / 255.0, maps, modes, colour)
    if haze > 0:
        airlight = np.float32(rng.uniform(*preset.airlight))
        if preset.airlight_tint > 0:
            tint = rng.uniform(-preset.airlight_tint, preset.airlight_tint, 3).astype(np.float32)
            airlight = np.clip(airlight + tint, 0.0, 1.0)
        rainy = rainy * (1.0 - haze) + airlight * haze
    if preset.noise[1] > 0:
        sigma = rng.uniform(*preset.noise)
        rainy = rainy + rng.normal(0.0, sigma, rainy.shape).astype(np.float32)
    rainy = np.clip(np.rint(rainy * 255.0), 0, 255).astype(np.uint8)
    if preset.jpeg_probability > 0 and rng.random() < preset.jpeg_probability:
        quality = int(rng.integers(preset.jpeg_quality[0], preset.jpeg_quality[1] + 1))
        ok, encoded = cv2.imencode(".jpg", rainy, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"cannot JPEG-encode a {rainy.shape} image at quality {quality}")
        rainy = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return rainy


def _draw_blend_modes(preset: RainPreset, count: int, rng: np.random.Generator) -> list[str]:
    """One blend mode per layer: the same for all (one draw per image) or one draw per layer."""
    if len(preset.blend) == 1:
        return [preset.blend[0]] * count
    if preset.blend_per_layer:
        return [preset.blend[int(rng.integers(len(preset.blend)))] for _ in range(count)]
    return [preset.blend[int(rng.integers(len(preset.blend)))]] * count


def _composite(clean: np.ndarray, maps: Sequence[np.ndarray], modes: Sequence[str], colour: float) -> np.ndarray:
    """Blend streak maps (HxW in [0, 1]) onto a float HxWx3 image in [0, 1], layer by layer."""
    if set(modes) == {"screen"}:  # one product, as the fixed-data presets have always computed it
        keep = np.ones(clean.shape[:2], np.float32)
        for streaks in maps:
            keep *= 1.0 - streaks
        return 1.0 - (1.0 - clean) * keep[..., None]
    rainy = clean
    for streaks, mode in zip(maps, modes, strict=True):
        alpha = streaks[..., None]
        if mode == "screen":
            rainy = 1.0 - (1.0 - rainy) * (1.0 - alpha)
        elif mode == "additive":
            rainy = np.minimum(rainy + alpha, 1.0)
        else:  # alpha: the streaks are a grey curtain of opacity ``streaks``
            rainy = rainy * (1.0 - alpha) + colour * alpha
    return rainy


def _preset(name: str) -> RainPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown rain preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _to_bgr_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """Convert a decoded image to 3-channel uint8 (grey is replicated, alpha dropped, 16 bit scaled)."""
    if image.dtype == np.uint16:
        image = np.rint(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise RainDataError(f"image {path} has unsupported pixel type {image.dtype}; use 8 or 16 bit images")
    try:
        return as_bgr(image, str(path))
    except ImageFileError as error:
        raise RainDataError(str(error)) from None


def load_source_images(folder: str | os.PathLike[str] | None) -> list[tuple[str, np.ndarray]]:
    """Load clean source photographs, sorted by file name.

    Args:
        folder: Folder whose files with an extension in :data:`IMAGE_EXTENSIONS` (any case) are used;
            ``None`` uses :data:`DEFAULT_SOURCES` from scikit-image's package folder.

    Returns:
        ``(file name, BGR uint8 HxWx3 image)`` pairs.

    Raises:
        RainDataError: Naming the folder or file: a missing folder, no images, or an unreadable image.
    """
    if folder is None:
        root = Path(os.path.dirname(skimage.data.__file__))
        files = [root / name for name in DEFAULT_SOURCES if (root / name).is_file()]
        if not files:
            raise RainDataError(f"none of the default source images {DEFAULT_SOURCES} exist in {root}")
    else:
        root = Path(folder)
        if not root.exists():
            raise RainDataError(f"source folder {root} does not exist")
        if not root.is_dir():
            raise RainDataError(f"source {root} is not a folder")
        files = sorted(p for p in root.iterdir() if is_image_name(p.name) and p.is_file())
        if not files:
            raise RainDataError(f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return read_photos(files)


def read_photos(files: Sequence[Path]) -> list[tuple[str, np.ndarray]]:
    """``(file name, BGR uint8 HxWx3 image)`` of each file (grey replicated, alpha dropped, 16 bit scaled).

    Raises:
        RainDataError: Naming a file that cannot be read or has an unsupported pixel type.
    """
    images = []
    for path in files:
        try:
            image = read_image(path)
        except ImageFileError as error:
            raise RainDataError(str(error)) from None
        images.append((path.name, _to_bgr_uint8(image, path)))
    return images


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` crop; sides shorter than ``size`` are first reflect-padded up to it."""
    height, width = image.shape[:2]
    pad_y, pad_x = max(0, size - height), max(0, size - width)
    if pad_y or pad_x:
        image = np.pad(image, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0)), "reflect")
        height, width = image.shape[:2]
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return image[top : top + size, left : left + size]


def fit_view(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side``, then centre-crop sides to multiples of 8."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        height, width = image.shape[:2]
    new_h = height - height % _DIMENSION_MULTIPLE if height >= _DIMENSION_MULTIPLE else height
    new_w = width - width % _DIMENSION_MULTIPLE if width >= _DIMENSION_MULTIPLE else width
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return image[top : top + new_h, left : left + new_w]


def write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    path.write_bytes(encoded.tobytes())


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def synthesize_dataset(
    out_dir: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    preset: str | RainPreset = "heavy",
    seed: int = 0,
    num_test_sources: int = 2,
    patches_per_image: int = 4,
    patch_size: int = 128,
    variants_per_patch: int = 3,
    test_variants: int = 4,
    test_max_side: int = 256,
    lmdb: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a paired rain dataset in the Rain100H (RainTrainH) layout.

    Layout: ``out_dir/{train,test}/rain-N.png`` with ``norain-N.png`` (N = 1, 2, ...), plus
    ``out_dir/synthesis.json`` holding the returned summary. The last ``num_test_sources`` sources
    (sorted by name) make the test split, the others the training split, so no photo is in both.

    Train pairs are ``patch_size`` square random crops (a source side shorter than ``patch_size`` is
    reflect-padded, so every train pair has the same size), each with ``variants_per_patch`` rain
    renderings. Test pairs are whole photos downscaled to at most ``test_max_side`` on the longer side and
    centre-cropped to multiples of 8, each with ``test_variants`` renderings. With the scikit-image
    sources the defaults give 7 x 4 x 3 = 84 train and 2 x 4 = 8 test pairs.

    The dataset is built in ``<out_dir>.tmp-<pid>`` and renamed into place only when complete.

    Args:
        out_dir: Output folder; must not exist or be empty unless ``overwrite``.
        source: Folder of clean photos; None uses scikit-image's bundled photos.
        preset: Rain preset name or object. Default: "heavy".
        seed: Seed; the same seed and sources give byte-identical files.
        num_test_sources: Sources reserved for the test split. Default: 2.
        patches_per_image: Train crops per train source. Default: 4.
        patch_size: Train crop side, pixels. Default: 128.
        variants_per_patch: Rain renderings per train crop. Default: 3.
        test_variants: Rain renderings per test photo. Default: 4.
        test_max_side: Longest side of test images, pixels. Default: 256.
        lmdb: Also write ``<split>/lq.lmdb`` and ``<split>/gt.lmdb`` (see :func:`synthesize_lmdb`).
        overwrite: Replace an existing non-empty ``out_dir``. Default: False.
        progress: Show tqdm progress bars. Default: True.

    Returns:
        Summary: preset (name and ranges), seed, source, settings, and per split the source names and
        number of pairs.

    Raises:
        RainDataError: For bad sources or fewer than ``num_test_sources + 1`` of them.
        FileExistsError: If ``out_dir`` exists, is not empty and ``overwrite`` is False.
        ValueError: For a bad preset or setting.
    """
    _check_positive(
        num_test_sources=num_test_sources,
        patches_per_image=patches_per_image,
        patch_size=patch_size,
        variants_per_patch=variants_per_patch,
        test_variants=test_variants,
        test_max_side=test_max_side,
    )
    rain = _preset(preset) if isinstance(preset, str) else preset
    sources = load_source_images(source)
    if len(sources) < num_test_sources + 1:
        raise RainDataError(
            f"{len(sources)} source image(s) in {source or 'the scikit-image photos'}, but "
            f"num_test_sources={num_test_sources} needs at least {num_test_sources + 1}"
        )
    train_sources = sources[:-num_test_sources]
    test_sources = sources[-num_test_sources:]
    # Separate streams keep the test split identical whatever the training settings.
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    def train_pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _, image in train_sources:
            for _ in range(patches_per_image):
                crop = _random_crop(image, patch_size, train_rng)
                for _ in range(variants_per_patch):
                    yield crop, add_rain(crop, rain, train_rng)

    def test_pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _, image in test_sources:
            view = fit_view(image, test_max_side)
            for _ in range(test_variants):
                yield view, add_rain(view, rain, test_rng)

    counts = {
        "train": len(train_sources) * patches_per_image * variants_per_patch,
        "test": len(test_sources) * test_variants,
    }
    summary = {
        "preset": rain.name,
        "preset_ranges": dataclasses.asdict(rain),
        "seed": seed,
        "source": "scikit-image" if source is None else str(source),
        "patch_size": patch_size,
        "patches_per_image": patches_per_image,
        "variants_per_patch": variants_per_patch,
        "test_variants": test_variants,
        "test_max_side": test_max_side,
        "lmdb": lmdb,
        "train": {"sources": [name for name, _ in train_sources], "pairs": counts["train"]},
        "test": {"sources": [name for name, _ in test_sources], "pairs": counts["test"]},
    }
    sources = [source if source is not None else os.path.dirname(skimage.data.__file__)]
    with staged_directory(out_dir, overwrite=overwrite, inputs=sources, tool="synthesize_rain") as staging:
        for split, pairs in (("train", train_pairs()), ("test", test_pairs())):
            split_dir = staging / split
            split_dir.mkdir()
            with tqdm(total=counts[split], unit="pair", desc=f"rain {split}", disable=not progress) as bar:
                for index, (clean, rainy) in enumerate(pairs, start=1):
                    write_png(split_dir / f"rain-{index}.png", rainy)
                    write_png(split_dir / f"norain-{index}.png", clean)
                    bar.update(1)
            if lmdb:
                synthesize_lmdb(staging, split, progress=progress)
        (staging / "synthesis.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def synthesize_lmdb(
    dataset_dir: str | os.PathLike[str], split: str, *, overwrite: bool = False, progress: bool = True
) -> tuple[str, str]:
    """Pack a split of a Rain100H-layout dataset into ``<split>/lq.lmdb`` and ``<split>/gt.lmdb``.

    ``rain-N.png`` goes to lq and ``norain-N.png`` to gt, both under the key ``f"{N:04d}"``.

    Args:
        dataset_dir: Dataset folder holding ``<split>/rain-N.png`` and ``<split>/norain-N.png``.
        split: Sub-folder name, e.g. "train" or "test".
        overwrite: Replace existing LMDBs. Default: False.
        progress: Show tqdm progress bars. Default: True.

    Returns:
        Paths of the lq and gt LMDBs.

    Raises:
        FileNotFoundError: If the split folder is missing, holds no ``rain-N.png``, or lacks a
            ``norain-N.png``.
    """
    split_dir = Path(dataset_dir) / split
    pairs = [(f"{pair.number:04d}", pair.rainy, pair.clean) for pair in raintrainh_pairs(split_dir)]
    return write_paired_lmdb(pairs, str(split_dir), overwrite=overwrite, progress=progress)
