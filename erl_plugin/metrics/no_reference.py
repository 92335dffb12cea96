"""No-reference quality of rainy photos that have no clean image: NIQE as BasicSR 1.4.2 computes it.

NIQE (Mittal et al., "Making a 'Completely Blind' Image Quality Analyzer", 2013) is the distance between
statistics of an image's 96x96 blocks and a model of pristine natural photos (``niqe_pris_params.npz``,
shipped with basicsr): lower looks more natural. It says nothing about fidelity to the scene: a network
that smooths rain away with the texture can score well, and NIQE was not fitted on rain. It is weak
evidence, on a scale of its own, never comparable to PSNR/SSIM.

The protocol, :data:`NIQE_PROTOCOL`: :func:`basicsr.metrics.niqe.calculate_niqe` on an 8-bit BGR image,
``input_order="HWC"``, ``convert_to="y"`` (MATLAB-style YCbCr Y, rounded), ``crop_border=0``. Every
number these functions produce is written with that name.

Size: NIQE fits a covariance to the features of whole 96x96 blocks (the rest of the image is cropped
away) and needs at least two of them, so images smaller than 96x192 or 192x96 are refused
(:class:`NiqeError`; basicsr itself fails on them with an unrelated error).
"""

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from basicsr.metrics.niqe import calculate_niqe

__all__ = ["NIQE_BLOCK", "NIQE_MIN_BLOCKS", "NIQE_PROTOCOL", "NiqeError", "NiqeScores", "check_niqe_size", "niqe"]

NIQE_PROTOCOL = "NIQE (no-reference, basicsr 1.4.2, Y channel, crop_border 0; lower is better)"
"""The name every NIQE number is printed and written with."""

NIQE_BLOCK = 96
"""Side of the blocks NIQE computes its statistics on (BasicSR's and the official default)."""

NIQE_MIN_BLOCKS = 2
"""Whole blocks NIQE needs: with one, the covariance of the blocks' features is undefined."""

_MINIMUM = (
    f"NIQE's minimum of {NIQE_MIN_BLOCKS} whole {NIQE_BLOCK}x{NIQE_BLOCK} blocks "
    f"({NIQE_BLOCK}x{NIQE_BLOCK * 2} or {NIQE_BLOCK * 2}x{NIQE_BLOCK} pixels)"
)


class NiqeError(ValueError):
    """An image NIQE cannot score (too small, flat, or not 8-bit BGR); the message names it."""


def check_niqe_size(height: int, width: int, name: str) -> None:
    """Refuse an image smaller than NIQE's minimum of :data:`NIQE_MIN_BLOCKS` whole blocks.

    Raises:
        NiqeError: Naming ``name``, its size and the minimum.
    """
    if (height // NIQE_BLOCK) * (width // NIQE_BLOCK) < NIQE_MIN_BLOCKS:
        raise NiqeError(f"{name}: {width}x{height} pixels (width x height), smaller than {_MINIMUM}; not scored")


def niqe(image: np.ndarray, name: str = "<array>") -> float:
    """NIQE of an 8-bit BGR image ``(H, W, 3)`` under :data:`NIQE_PROTOCOL`; lower is better.

    Raises:
        NiqeError: Another pixel type or shape, an image smaller than the minimum
            (:func:`check_niqe_size`), or one NIQE is undefined for (too few textured blocks), naming ``name``.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise NiqeError(f"{name}: NIQE takes 8-bit BGR images (H, W, 3), got {image.dtype} of shape {image.shape}")
    check_niqe_size(*image.shape[:2], name)
    # basicsr leaves blocks whose features are undefined (flat or saturated) out of its mean and covariance,
    # warning as it does; a result those blocks make undefined is refused below instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            value = float(calculate_niqe(image, crop_border=0, input_order="HWC", convert_to="y"))
        except np.linalg.LinAlgError:
            value = math.nan
    if not math.isfinite(value):
        raise NiqeError(
            f"{name}: NIQE is undefined for it (fewer than {NIQE_MIN_BLOCKS} of its {NIQE_BLOCK}x{NIQE_BLOCK} "
            "blocks have texture: flat or saturated); not scored"
        )
    return value


class NiqeScores:
    """NIQE of a set of images in several versions: the first is the baseline (the rainy input), the others
    are compared with it (each network's output).

    An image is scored only when every version of it can be, so every mean is over the same images; the
    others are kept with the reason (:attr:`skipped`), never averaged as NaN.

    Args:
        versions: The versions' names, baseline first (``["rainy input", "MEMD", "ERL-Net"]``).
    """

    def __init__(self, versions: Sequence[str]) -> None:
        if len(versions) < 2 or len(set(versions)) != len(versions):
            raise ValueError(f"versions must be two or more distinct names, baseline first; got {list(versions)}")
        self.versions = tuple(versions)
        self.names: list[str] = []
        self.values: dict[str, list[float]] = {version: [] for version in self.versions}
        self.skipped: list[tuple[str, str]] = []

    @property
    def baseline(self) -> str:
        """The version the others are compared with."""
        return self.versions[0]

    @property
    def total(self) -> int:
        """Images seen, scored or not."""
        return len(self.names) + len(self.skipped)

    def add(self, name: str, images: Sequence[np.ndarray]) -> bool:
        """Score one image in every version (8-bit BGR, in the order of :attr:`versions`).

        Returns:
            Whether it was scored; if not, :attr:`skipped` holds ``(name, reason)``.
        """
        if len(images) != len(self.versions):
            raise ValueError(f"{name}: {len(images)} images given for the versions {', '.join(self.versions)}")
        try:
            row = [niqe(image, f"{name} ({version})") for version, image in zip(self.versions, images, strict=True)]
        except NiqeError as error:
            self.skip(name, str(error))
            return False
        self.names.append(name)
        for version, value in zip(self.versions, row, strict=True):
            self.values[version].append(value)
        return True

    def skip(self, name: str, reason: str) -> None:
        """Record an image that is not scored, with the reason (which names it)."""
        self.skipped.append((name, reason))

    def means(self) -> dict[str, float]:
        """Mean NIQE per version over the scored images; empty when none was scored."""
        if not self.names:
            return {}
        return {version: float(np.mean(values)) for version, values in self.values.items()}

    def mean_changes(self) -> dict[str, float]:
        """Mean NIQE of each non-baseline version minus the baseline's (negative: lower, better)."""
        means = self.means()
        return {version: means[version] - means[self.baseline] for version in self.versions[1:] if means}

    def csv(self) -> str:
        """Per-image scores as CSV text: one column per version, each header naming the protocol; the images
        not scored follow with empty scores and the reason."""
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["image", *(f"{version} {NIQE_PROTOCOL}" for version in self.versions), "not scored because"])
        for index, name in enumerate(self.names):
            writer.writerow([name, *(f"{self.values[version][index]:.4f}" for version in self.versions), ""])
        for name, reason in self.skipped:
            writer.writerow([name, *([""] * len(self.versions)), reason])
        return text.getvalue()

    def markdown(self, title: str, scored: Mapping[str, str] | None = None) -> str:
        """A Markdown table of the mean NIQE per version and its mean change from the baseline, headed by the
        protocol, then the images not scored.

        Args:
            title: What was scored (the photos' folder).
            scored: The network each non-baseline version ran (a "network scored" column when given).
        """
        lines = [
            f"{title}: {len(self.names)} of {self.total} images scored, {NIQE_PROTOCOL}",
            "",
            "No clean reference: NIQE rates how natural an image's statistics look, not its fidelity to the scene; "
            "it is not comparable to PSNR/SSIM.",
            "",
        ]
        means, changes = self.means(), self.mean_changes()
        if means:
            column = " network scored |" if scored is not None else ""
            lines += [
                f"| version | mean NIQE (no-reference; lower is better) | mean change vs {self.baseline} |{column}",
                "| --- | --- | --- |" + (" --- |" if scored is not None else ""),
            ]
            for version, mean in means.items():
                change = "(baseline)" if version == self.baseline else f"{changes[version]:+.3f}"
                network = "the input itself" if version == self.baseline else (scored or {}).get(version, "")
                lines.append(f"| {version} | {mean:.3f} | {change} |" + (f" {network} |" if scored is not None else ""))
        else:
            lines.append("No image could be scored.")
        if self.skipped:
            lines += ["", f"Not scored ({len(self.skipped)}):", *(f"- {reason}" for _, reason in self.skipped)]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: the mean of each version and the change from the baseline, naming the protocol."""
        means, changes = self.means(), self.mean_changes()
        if not means:
            return f"{NIQE_PROTOCOL}: no image could be scored ({len(self.skipped)} not scored)"
        parts = [f"{self.baseline} {means[self.baseline]:.3f}"]
        parts += [f"{version} {means[version]:.3f} (mean change {changes[version]:+.3f})" for version in changes]
        return f"{NIQE_PROTOCOL} over {len(self.names)} of {self.total} images: {', '.join(parts)}"
