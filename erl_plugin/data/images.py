"""Reading images: one place for decoding, orientation and the checks every file gets where it enters.

:func:`read_image` decodes a file with OpenCV, upright (its EXIF orientation applied), after
checking its declared size against :data:`MAX_IMAGE_PIXELS` before any pixel is decoded;
:func:`read_image_size` reads that size alone. :func:`as_bgr` is the one rule that makes a decoded
image 3-channel BGR. Every failure is an :class:`ImageFileError` naming the file.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image

__all__ = ["MAX_IMAGE_PIXELS", "ImageFileError", "as_bgr", "read_image", "read_image_size"]

MAX_IMAGE_PIXELS = 16384 * 16384
"""Width x height above which an image file is refused before any pixel is decoded.

A file of a few bytes can declare gigapixels (a decompression bomb); 16384 x 16384 (268 million
pixels, 0.8 GB as 8-bit RGB) is far above any photo or training image.
"""


class ImageFileError(ValueError):
    """An image file is missing, empty, undecodable or truncated."""


def read_image(path: str | os.PathLike[str], flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file with OpenCV, upright, rejecting empty, corrupt, truncated and oversized files.

    The declared size is read from the header first: more than :data:`MAX_IMAGE_PIXELS` is refused
    before anything is decoded. OpenCV may decode a truncated file partially without complaint, so
    files Pillow can parse are also fully decoded by Pillow as a second opinion on completeness. The
    EXIF orientation (as Pillow reads it) is applied for every ``flags``, ``cv2.IMREAD_UNCHANGED``
    included (OpenCV ignores it there), so one file gives the same pixels wherever it is read; add
    ``cv2.IMREAD_IGNORE_ORIENTATION`` to ``flags`` for the pixels as stored. Bit depth and channels
    are as ``flags`` decode them (16-bit and alpha survive ``cv2.IMREAD_UNCHANGED``).

    Args:
        path: Image file.
        flags: ``cv2.imdecode`` flags. Default: ``cv2.IMREAD_UNCHANGED``.

    Returns:
        The decoded array as OpenCV returns it (BGR channel order for colour images).

    Raises:
        ImageFileError: If the file cannot be read, is empty, declares more than
            :data:`MAX_IMAGE_PIXELS`, cannot be decoded or is truncated.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ImageFileError(f"cannot read image file {file}: {error.strerror or error}") from None
    if not data:
        raise ImageFileError(f"image file {file} is empty (0 bytes)")
    header = _open_header(io.BytesIO(data), file)
    if header is not None:
        _check_pixels(file, header.size)
    keep_stored = flags != cv2.IMREAD_UNCHANGED and bool(flags & cv2.IMREAD_IGNORE_ORIENTATION)
    # OpenCV applies the orientation itself for some flags only; it is applied below, once, for all.
    decode_flags = flags if flags == cv2.IMREAD_UNCHANGED else flags | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), decode_flags)
    except cv2.error as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "OpenCV error"
        raise ImageFileError(f"image file {file} cannot be decoded ({reason.strip()})") from None
    if image is None or image.size == 0:
        raise ImageFileError(f"image file {file} cannot be decoded (not an image, or corrupt)")
    if header is None:
        return image  # a format Pillow does not know; OpenCV's decode is all we have
    with header:
        try:
            header.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageFileError(f"image file {file} is truncated or corrupt ({error})") from None
        # Read after decoding: a PNG's eXIf chunk may follow the pixels, and TIFF readers (OpenCV's
        # and Pillow's alike) apply the orientation while decoding and Pillow then drops the tag.
        orientation = 1 if keep_stored else _orientation(header)
    return _apply_orientation(image, orientation)


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of the array :func:`read_image` returns for ``path``, from the header where
    Pillow can parse it (EXIF orientation applied), else by decoding.

    Raises:
        ImageFileError: As :func:`read_image`, for a file it cannot open or that declares more than
            :data:`MAX_IMAGE_PIXELS`.
    """
    file = Path(path)
    try:
        handle = open(file, "rb")
    except OSError as error:
        raise ImageFileError(f"cannot read image file {file}: {error.strerror or error}") from None
    with handle:
        header = _open_header(handle, file)
        if header is None:
            return read_image(file).shape[:2]
        with header:
            _check_pixels(file, header.size)
            width, height = header.size
            # Pillow's TIFF reader gives the upright size itself; a PNG's eXIf chunk after the pixels is
            # only found by decoding them (read_image finds it).
            late_exif = header.format == "PNG" and "exif" not in header.info
            orientation = 1 if late_exif or header.format == "TIFF" else _orientation(header)
    return (width, height) if orientation in _TRANSPOSING else (height, width)


# EXIF orientation -> the array operation that makes the image upright, as Pillow's exif_transpose does.
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda image: image[:, ::-1],
    3: lambda image: image[::-1, ::-1],
    4: lambda image: image[::-1],
    5: lambda image: image.swapaxes(0, 1),
    6: lambda image: np.rot90(image, -1),
    7: lambda image: image[::-1, ::-1].swapaxes(0, 1),
    8: lambda image: np.rot90(image, 1),
}
_TRANSPOSING = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
_HEADER_ERRORS = (OSError, SyntaxError, ValueError, IndexError, TypeError, KeyError, EOFError, struct.error)


def _open_header(handle: IO[bytes], file: Path) -> Image.Image | None:
    """The image opened by Pillow's reader for its format, header parsed and no pixel decoded; None
    for a format Pillow does not read.

    ``Image.open`` refuses sizes above Pillow's own limit without reporting the size, so its readers
    are tried here as it tries them, in its order, and :func:`_check_pixels` applies this module's limit.
    """
    Image.init()
    prefix = handle.read(16)
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        if accept is not None:
            verdict = accept(prefix)
            if not verdict or isinstance(verdict, str):  # a string is Pillow's "recognised, unsupported"
                continue
        handle.seek(0)
        try:
            return factory(handle, str(file))
        except Image.DecompressionBombError as error:  # a reader that checks sizes itself
            raise ImageFileError(f"image file {file}: refused before decoding ({error})") from None
        except _HEADER_ERRORS:
            continue
    return None


def _check_pixels(file: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageFileError(
            f"image file {file} declares {width}x{height} pixels ({width * height:,}), more than the limit of "
            f"{MAX_IMAGE_PIXELS:,} (MAX_IMAGE_PIXELS): refused before decoding (a decompression bomb, or not a photo)"
        )


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation Pillow reads, 1 (as stored) when absent, unreadable or invalid."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _HEADER_ERRORS:
        return 1  # a damaged EXIF block: OpenCV ignores it too
    return value if value in _ORIENTATIONS else 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    transform = _ORIENTATIONS.get(orientation)
    return image if transform is None else np.ascontiguousarray(transform(image))


def as_bgr(image: np.ndarray, name: str = "<array>") -> np.ndarray:
    """The image as 3-channel BGR of its own dtype: gray repeated to 3 channels, an alpha channel dropped
    (not composited), a single channel squeezed.

    Raises:
        ImageFileError: Another channel count, naming ``name``.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageFileError(f"image {name} has shape {image.shape}: expected 1, 3 or 4 channels")
    return np.ascontiguousarray(image[:, :, :3])
