"""Write image LMDBs in BasicSR's format, staged so that a failure never leaves a partial result.

The layout is the one basicsr's ``make_lmdb_from_imgs`` produces and ``paired_paths_from_lmdb`` /
``LmdbBackend`` read: a folder ``<name>.lmdb`` holding ``data.mdb`` (key -> PNG bytes) and
``meta_info.txt`` with one line ``<key>.png (<h>,<w>,<c>) <compress_level>`` per image.

Everything is written into a temporary sibling folder, re-opened read-only and verified, and only
then renamed to the final name (see :func:`erl_plugin.utils.outputs.staged_directory`).

Example:
    >>> write_image_lmdb([("0001", "rain-1.png"), ("0002", "rain-2.png")], "train/lq.lmdb")
    2
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from erl_plugin.data.images import ImageFileError, read_image
from erl_plugin.utils.outputs import staged_directory

__all__ = [
    "ImageLmdbWriter",
    "check_image_lmdb",
    "encode_png",
    "image_shape",
    "write_image_lmdb",
    "write_paired_lmdb",
]

# LMDB files are sparse on Linux, so a generous first guess costs nothing; the map doubles on demand.
_INITIAL_MAP_SIZE = 256 * 1024**2
# A write transaction is committed every this many images or bytes, which bounds memory use.
_COMMIT_EVERY_ITEMS = 256
_COMMIT_EVERY_BYTES = 64 * 1024**2
_MAX_KEY_BYTES = 511  # LMDB's default maximum key size
_META_LINE = re.compile(r"(?P<key>[^.\s]+)\.png \((?P<h>[0-9]+),(?P<w>[0-9]+),(?P<c>[0-9]+)\) [0-9]")

ImageCheck = Callable[[str, str, np.ndarray], None]


def write_image_lmdb(
    items: Iterable[tuple[str, str | os.PathLike[str]]],
    lmdb_path: str | os.PathLike[str],
    *,
    compress_level: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Write images into a BasicSR LMDB, streaming one image at a time.

    Each image is read with ``cv2.IMREAD_UNCHANGED`` and stored PNG-encoded, so values decode to the
    original pixels exactly.

    Args:
        items: ``(key, image_path)`` pairs. Keys must be unique, non-empty ASCII without ``.`` or
            whitespace (BasicSR recovers the key as the text before the first ``.`` of a meta line).
        lmdb_path: Output folder; must end with ``.lmdb``.
        compress_level: PNG compression level, 0-9. Default: 1 (as BasicSR).
        overwrite: Replace an existing non-empty ``lmdb_path`` (only once the new one is verified).
            Default: False.
        progress: Show a tqdm progress bar. Default: True.

    Returns:
        Number of images written.

    Raises:
        ValueError: For a bad key, path, compression level, or no items.
        ImageFileError: For an image that cannot be read.
        FileExistsError: If ``lmdb_path`` exists and ``overwrite`` is False.
    """
    lmdb_path = os.fspath(lmdb_path)
    _check_lmdb_path(lmdb_path)
    _check_compress_level(compress_level)
    items = list(items)
    with staged_directory(lmdb_path, overwrite=overwrite, inputs=[path for _, path in items], tool="lmdb") as temporary:
        lines = _build_lmdb(items, temporary, compress_level, progress, len(items), None, lmdb_path)
        _verify_lmdb(temporary, lines)
    return len(lines)


def write_paired_lmdb(
    pairs: Sequence[tuple[str, str | os.PathLike[str], str | os.PathLike[str]]],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[str, str]:
    """Write ``out_dir/lq.lmdb`` and ``out_dir/gt.lmdb`` with the same keys, for ``PairedImageDataset``.

    Both LMDBs are staged and verified before either appears under its final name.

    Args:
        pairs: ``(key, lq_path, gt_path)`` triples; key rules as in :func:`write_image_lmdb`.
        out_dir: Folder that receives ``lq.lmdb`` and ``gt.lmdb`` (created if missing).
        overwrite: Replace existing LMDBs. Default: False.
        progress: Show tqdm progress bars. Default: True.

    Returns:
        Paths of the lq and gt LMDBs.

    Raises:
        ValueError: For a bad key, no pairs, or a pair whose images differ in height/width.
        ImageFileError: For an image that cannot be read.
        FileExistsError: If an LMDB exists and ``overwrite`` is False.
    """
    lq_path = os.path.join(out_dir, "lq.lmdb")  # str even when out_dir is a Path
    gt_path = os.path.join(out_dir, "gt.lmdb")
    lq_sizes: dict[str, tuple[str, tuple[int, int]]] = {}

    def record_lq(key: str, path: str, image: np.ndarray) -> None:
        lq_sizes[key] = (path, image.shape[:2])

    def check_gt(key: str, path: str, image: np.ndarray) -> None:
        lq_file, lq_hw = lq_sizes[key]
        if image.shape[:2] != lq_hw:
            raise ValueError(
                f"pair {key!r}: lq {lq_file} is {lq_hw[0]}x{lq_hw[1]} but gt {path} is "
                f"{image.shape[0]}x{image.shape[1]} (height x width must match)"
            )

    sources = [path for _, lq, gt in pairs for path in (lq, gt)]
    with (
        staged_directory(lq_path, overwrite=overwrite, inputs=sources, tool="lmdb") as lq_temporary,
        staged_directory(gt_path, overwrite=overwrite, inputs=sources, tool="lmdb") as gt_temporary,
    ):
        lq_items = [(key, lq) for key, lq, _ in pairs]
        gt_items = [(key, gt) for key, _, gt in pairs]
        lq_lines = _build_lmdb(lq_items, lq_temporary, 1, progress, len(pairs), record_lq, lq_path)
        gt_lines = _build_lmdb(gt_items, gt_temporary, 1, progress, len(pairs), check_gt, gt_path)
        _verify_lmdb(lq_temporary, lq_lines)
        _verify_lmdb(gt_temporary, gt_lines)
    return lq_path, gt_path


class ImageLmdbWriter:
    """Stream PNG-encoded images into a new BasicSR LMDB folder and its ``meta_info.txt``.

    Images are committed in batches (bounded memory); the map size doubles when full. Closing (or
    leaving the ``with`` block without an error) commits the rest and flushes to disk. The folder
    should be a staging folder (:func:`staged_directory`): on error the writer only closes, and the
    partial LMDB is left for the stage to delete.

    Args:
        folder: Existing empty folder that receives ``data.mdb`` and ``meta_info.txt``.
        compress_level: PNG compression level recorded in ``meta_info.txt``. Default: 1.

    Example:
        >>> with ImageLmdbWriter(stage / "lq.lmdb") as writer:
        ...     writer.add("rain-1", encode_png(image), image_shape(image))
    """

    def __init__(self, folder: str | os.PathLike[str], *, compress_level: int = 1) -> None:
        _check_compress_level(compress_level)
        self.folder = Path(folder)
        self.compress_level = compress_level
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self._pending: list[tuple[bytes, bytes, str]] = []
        self._pending_bytes = 0
        self._env = lmdb.open(str(self.folder), map_size=_INITIAL_MAP_SIZE, meminit=False)
        self._meta = open(self.folder / "meta_info.txt", "w", encoding="ascii", newline="\n")

    def add(self, key: str, encoded: bytes, shape: tuple[int, int, int]) -> None:
        """Queue one PNG-encoded image under ``key`` (key rules as in :func:`write_image_lmdb`).

        Args:
            key: LMDB key.
            encoded: PNG bytes.
            shape: ``(height, width, channels)`` of the decoded image, as recorded in ``meta_info.txt``.

        Raises:
            ValueError: For an invalid or repeated key.
        """
        key = _check_key(key, self._seen)
        height, width, channels = shape
        line = f"{key}.png ({height},{width},{channels}) {self.compress_level}\n"
        self._pending.append((key.encode("ascii"), encoded, line))
        self._pending_bytes += len(encoded)
        if len(self._pending) >= _COMMIT_EVERY_ITEMS or self._pending_bytes >= _COMMIT_EVERY_BYTES:
            self._commit()

    def close(self) -> list[str]:
        """Commit what is queued, flush and close; returns the ``meta_info.txt`` lines written."""
        try:
            self._commit()
            self._env.sync()
        finally:
            self._env.close()
            self._meta.close()
        return self.lines

    def __enter__(self) -> ImageLmdbWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._env.close()
            self._meta.close()

    def _commit(self) -> None:
        """Put the queued images in one transaction (doubling the map size until it fits), then log them."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value, _ in self._pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as error:  # a full disk shows as EIO or ENOSPC here, never as an OSError
                free = shutil.disk_usage(self.folder).free
                raise OSError(
                    f"{self.folder}: the LMDB could not be written ({error}; {free / 2**20:.1f} MiB free on that "
                    "device); nothing is kept: free some space, then run the command again"
                ) from None
        for _, _, line in self._pending:
            self._meta.write(line)
            self.lines.append(line)
        self._pending, self._pending_bytes = [], 0


def encode_png(image: np.ndarray, compress_level: int = 1, path: str | os.PathLike[str] = "<array>") -> bytes:
    """PNG-encode an OpenCV image losslessly.

    Args:
        image: Array as :func:`read_image` returns it.
        compress_level: PNG compression level, 0-9. Default: 1.
        path: Where the image came from, named in the error.

    Raises:
        ImageFileError: If OpenCV cannot encode the array.
    """
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise ImageFileError(f"image file {path} cannot be encoded as PNG")
    return encoded.tobytes()


def image_shape(image: np.ndarray) -> tuple[int, int, int]:
    """``(height, width, channels)`` of an OpenCV image, with 1 channel for a 2-D array."""
    return image.shape[0], image.shape[1], 1 if image.ndim == 2 else image.shape[2]


def check_image_lmdb(lmdb_path: str | os.PathLike[str]) -> tuple[dict[str, tuple[int, int, int]], list[str]]:
    """Re-open an image LMDB read-only and check it against its ``meta_info.txt``.

    Every meta line must parse, name a distinct key present in ``data.mdb`` that decodes to the recorded
    shape, and ``data.mdb`` must hold no key the meta file does not list.

    Args:
        lmdb_path: The ``<name>.lmdb`` folder.

    Returns:
        ``(shapes, problems)``: the ``(h, w, c)`` recorded for each key, and one message per problem
        found (each naming the folder and the key or line); no problems means the LMDB is sound.
    """
    folder = Path(lmdb_path)
    meta_path = folder / "meta_info.txt"
    if not (folder / "data.mdb").is_file() or not meta_path.is_file():
        return {}, [f"{folder}: not an image LMDB (data.mdb or meta_info.txt missing)"]
    shapes: dict[str, tuple[int, int, int]] = {}
    problems: list[str] = []
    with open(meta_path, encoding="utf-8", errors="replace") as meta:
        for number, line in enumerate(meta, start=1):
            match = _META_LINE.fullmatch(line.rstrip("\n"))
            if match is None:
                problems.append(f"{meta_path}:{number}: malformed line {line.rstrip()!r}")
            elif match["key"] in shapes:
                problems.append(f"{meta_path}:{number}: key {match['key']!r} listed twice")
            else:
                shapes[match["key"]] = (int(match["h"]), int(match["w"]), int(match["c"]))
    try:
        env = lmdb.open(str(folder), readonly=True, lock=False, readahead=False, create=False)
    except lmdb.Error as error:
        return shapes, [*problems, f"{folder}: data.mdb cannot be opened ({error})"]
    try:
        with env.begin() as txn:
            for key, shape in shapes.items():
                value = txn.get(key.encode("ascii"))
                if value is None:
                    problems.append(f"{folder}: key {key!r} is listed in meta_info.txt but missing from data.mdb")
                    continue
                image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
                if image is None:
                    problems.append(f"{folder}: key {key!r} does not decode as an image")
                elif image_shape(image) != shape:
                    decoded = image_shape(image)
                    problems.append(f"{folder}: key {key!r} decodes to {decoded}, meta_info.txt says {shape}")
            for raw_key in txn.cursor().iternext(keys=True, values=False):
                key = raw_key.decode("ascii", errors="replace")
                if key not in shapes:
                    problems.append(f"{folder}: key {key!r} is in data.mdb but not listed in meta_info.txt")
    finally:
        env.close()
    return shapes, problems


def _check_lmdb_path(lmdb_path: str) -> None:
    if not lmdb_path.endswith(".lmdb"):
        raise ValueError(f"lmdb_path must end with '.lmdb' (BasicSR requires it), got {lmdb_path!r}")


def _check_compress_level(compress_level: int) -> None:
    if not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be an integer in 0..9, got {compress_level!r}")


def _check_key(key: object, seen: set[str]) -> str:
    allowed = "keys must be non-empty ASCII strings without '.' or whitespace"
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid LMDB key {key!r}: {allowed}")
    if not key.isascii() or "." in key or any(char.isspace() for char in key):
        raise ValueError(f"invalid LMDB key {key!r}: {allowed}")
    if len(key) > _MAX_KEY_BYTES:
        raise ValueError(f"invalid LMDB key {key[:20]!r}...: longer than {_MAX_KEY_BYTES} characters")
    if key in seen:
        raise ValueError(f"duplicate LMDB key {key!r}: keys must be unique")
    seen.add(key)
    return key


def _build_lmdb(
    items: Iterable[tuple[str, str | os.PathLike[str]]],
    folder: Path,
    compress_level: int,
    progress: bool,
    total: int | None,
    on_image: ImageCheck | None,
    name: str,
) -> list[str]:
    """Fill an LMDB in ``folder`` (to become ``name``) and write its meta_info.txt; returns the meta lines."""
    with (
        ImageLmdbWriter(folder, compress_level=compress_level) as writer,
        tqdm(total=total, unit="img", desc=f"LMDB {name}", disable=not progress) as bar,
    ):
        for key, path in items:
            image = read_image(path)
            if on_image is not None:
                on_image(key, str(path), image)
            writer.add(key, encode_png(image, compress_level, path), image_shape(image))
            bar.update(1)
    if not writer.lines:
        raise ValueError(f"no images given for {name}: an LMDB needs at least one")
    return writer.lines


def _verify_lmdb(folder: Path, lines: list[str]) -> None:
    """Check meta_info.txt matches ``lines`` and every key decodes to an image of the recorded shape."""
    with open(folder / "meta_info.txt", encoding="ascii") as meta:
        if meta.readlines() != lines:
            raise RuntimeError(f"verification of {folder} failed: meta_info.txt differs from what was written")
    _, problems = check_image_lmdb(folder)
    if problems:
        raise RuntimeError(f"verification of {folder} failed: " + "; ".join(problems))
