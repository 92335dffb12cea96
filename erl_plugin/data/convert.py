"""Convert a paired deraining data set from its release layout into BasicSR LMDBs and a pair list.

The output folder ``DST`` holds:

- ``lq.lmdb/`` and ``gt.lmdb/``: BasicSR image LMDBs (``data.mdb`` + ``meta_info.txt``, PNG values);
  a clean image shared by several rainy images (DDN) is stored once;
- ``pairs.txt``: ``<lq key><TAB><gt key>`` per pair (:mod:`erl_plugin.data.pair_list`);
- ``sources.txt``: ``<lq|gt><TAB><key><TAB><source path relative to SRC>`` per stored image (for DID,
  the path ends in ``#left`` or ``#right``: the half the image was cut from);
- ``skipped.txt`` (only with ``skip_bad``): ``<lq path><TAB><gt path><TAB><reason>`` per skipped pair.

Keys are the source path relative to ``SRC`` without extension, ``/`` written ``__`` and every character
outside ``[A-Za-z0-9_-]`` written ``_``; a key taken already gets ``-<8 hex digits of sha1(path)>``.
The same source always gives byte-identical ``pairs.txt`` and ``sources.txt``.

Example:
    >>> summary = convert_dataset("ddn", "datasets/DDN-Data/train", "datasets/ddn_train")
    >>> verify_dataset("datasets/ddn_train").problems
    []
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import signal
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from erl_plugin.data.dataset_check import IDENTITY_SAMPLE, identical_files
from erl_plugin.data.images import ImageFileError, read_image
from erl_plugin.data.layouts import SIDE_BY_SIDE_LAYOUTS, find_pairs, source_root, strip_extension
from erl_plugin.data.lmdb_writer import ImageLmdbWriter, check_image_lmdb, encode_png, image_shape
from erl_plugin.data.pair_list import PairListError, read_pair_list, write_pair_list
from erl_plugin.utils.outputs import staged_directory

__all__ = ["ConversionError", "ConversionSummary", "DatasetReport", "convert_dataset", "make_keys", "verify_dataset"]

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Tasks handed to the pool per round: bounds the encoded images waiting for the writer.
_TASKS_PER_WORKER_ROUND = 64
_CHUNK_SIZE = 4


class ConversionError(ValueError):
    """A pair that cannot be converted (bad image, size mismatch) or nothing left to convert."""


@dataclass(frozen=True)
class ConversionSummary:
    """What :func:`convert_dataset` wrote.

    Attributes:
        dst: Output folder.
        pairs: Pairs in ``pairs.txt``.
        lq_images: Images in ``lq.lmdb``.
        gt_images: Images in ``gt.lmdb`` (fewer than ``pairs`` when clean images are shared).
        skipped: ``(lq path, gt path, reason)`` of each pair left out with ``skip_bad``.
    """

    dst: Path
    pairs: int
    lq_images: int
    gt_images: int
    skipped: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetReport:
    """Result of :func:`verify_dataset`: counts, and one message per problem (none: the data set is sound)."""

    lq_images: int
    gt_images: int
    pairs: int
    problems: list[str]


@dataclass(frozen=True)
class _Task:
    lq_path: str
    gt_path: str
    side_by_side: bool
    encode_gt: bool


@dataclass(frozen=True)
class _Encoded:
    lq_png: bytes
    lq_shape: tuple[int, int, int]
    gt_png: bytes | None
    gt_shape: tuple[int, int, int]


def make_keys(paths: Iterable[str]) -> dict[str, str]:
    """LMDB keys for relative source paths, assigned in the order given (see the module docstring).

    Args:
        paths: Relative paths with ``/`` separators; repeats are given one key.

    Returns:
        ``{path: key}``; keys are unique, non-empty ASCII without dots or whitespace.

    Raises:
        ValueError: In the (practically impossible) case that the hashed key is taken too.
    """
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for path in paths:
        if path in keys:
            continue
        key = "__".join(_KEY_UNSAFE.sub("_", part) for part in strip_extension(path).split("/"))
        if key in taken:
            key = f"{key}-{hashlib.sha1(path.encode('utf-8')).hexdigest()[:8]}"
            if key in taken:
                raise ValueError(f"cannot derive a unique LMDB key for {path!r}: {key!r} is taken")
        keys[path] = key
        taken.add(key)
    return keys


def convert_dataset(
    layout: str,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    lq_dir: str = "input",
    gt_dir: str = "target",
    overwrite: bool = False,
    skip_bad: bool = False,
    allow_identity: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> ConversionSummary:
    """Convert the data set at ``src`` (read as ``layout``) into ``dst``; see the module docstring.

    Images are read, checked, encoded and written one pair at a time. Everything is built in a
    temporary sibling of ``dst``, verified by re-reading every key, and renamed to ``dst`` only then:
    an error or Ctrl-C leaves ``dst`` as it was.

    Args:
        layout: A name from :data:`erl_plugin.data.layouts.LAYOUTS`.
        src: Source folder, or pair-list file for ``list``.
        dst: Output folder.
        lq_dir: Rainy folder of the ``pairs`` layout. Default: ``input``.
        gt_dir: Clean folder of the ``pairs`` layout. Default: ``target``.
        overwrite: Replace an existing non-empty ``dst``. Default: False.
        skip_bad: Leave out pairs with an unreadable image or mismatched sizes (listed in
            ``skipped.txt``) instead of stopping. Default: False.
        allow_identity: Write pairs whose rainy and clean files are identical (the first pairs are
            compared; identical ones would train an identity network). Default: False.
        workers: Processes that decode and encode images; 1 does it in this process. Default: 1.
        progress: Show a tqdm progress bar. Default: True.

    Returns:
        Counts of what was written and the skipped pairs.

    Raises:
        LayoutError: If ``src`` does not match ``layout`` (see :mod:`erl_plugin.data.layouts`).
        ConversionError: For a bad pair without ``skip_bad``, when every pair was skipped, or for
            identical rainy and clean files without ``allow_identity``.
        FileExistsError: If ``dst`` exists, is not empty, and ``overwrite`` is False.
        RuntimeError: If the written data set fails verification.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    pairs = find_pairs(layout, src, lq_dir=lq_dir, gt_dir=gt_dir)
    for path in {path for pair in pairs for path in pair}:
        if any(char in path for char in "\t\n\r"):
            raise ValueError(f"source path {path!r} holds a tab or line break; rename it")
    root = source_root(layout, src)
    side_by_side = layout in SIDE_BY_SIDE_LAYOUTS
    if (
        not side_by_side
        and not allow_identity
        and identical_files([(str(root / lq), str(root / gt)) for lq, gt in pairs])
    ):
        lq, gt = pairs[0]
        raise ConversionError(
            f"the first {min(len(pairs), IDENTITY_SAMPLE)} pairs have identical rainy and clean files ({root / lq} = "
            f"{root / gt}): the LMDB would train an identity network; check the rainy and clean folders "
            "(--lq-dir/--gt-dir for --layout pairs), or pass --allow-identity if this is meant"
        )
    lq_keys = make_keys(lq for lq, _ in pairs)
    gt_keys = make_keys(gt for _, gt in pairs)
    lq_note, gt_note = ("#left", "#right") if side_by_side else ("", "")

    first_use: set[str] = set()
    tasks = []
    for lq, gt in pairs:
        tasks.append(_Task(str(root / lq), str(root / gt), side_by_side, gt not in first_use))
        first_use.add(gt)

    pair_keys: list[tuple[str, str]] = []
    sources: list[str] = []
    skipped: list[tuple[str, str, str]] = []
    stored_gt: set[str] = set()
    with staged_directory(dst, overwrite=overwrite, inputs=[root], tool="create_lmdb") as stage:
        (stage / "lq.lmdb").mkdir()
        (stage / "gt.lmdb").mkdir()
        with (
            ImageLmdbWriter(stage / "lq.lmdb") as lq_writer,
            ImageLmdbWriter(stage / "gt.lmdb") as gt_writer,
            _encoded_pairs(tasks, workers) as results,
            tqdm(total=len(tasks), unit="pair", desc=f"convert {layout}", disable=not progress) as bar,
        ):
            for (lq, gt), task, result in zip(pairs, tasks, results, strict=True):
                bar.update(1)
                if isinstance(result, str):
                    if not skip_bad:
                        raise ConversionError(f"{result} (pass --skip-bad to leave such pairs out)")
                    skipped.append((lq, gt, result))
                    continue
                if gt not in stored_gt:
                    # The pair that was to encode this clean image may have been skipped.
                    gt_png = result.gt_png if result.gt_png is not None else encode_png(read_image(task.gt_path))
                    gt_writer.add(gt_keys[gt], gt_png, result.gt_shape)
                    stored_gt.add(gt)
                    sources.append(f"gt\t{gt_keys[gt]}\t{gt}{gt_note}\n")
                lq_writer.add(lq_keys[lq], result.lq_png, result.lq_shape)
                sources.append(f"lq\t{lq_keys[lq]}\t{lq}{lq_note}\n")
                pair_keys.append((lq_keys[lq], gt_keys[gt]))
        if not pair_keys:
            raise ConversionError(f"{src}: every pair was skipped as bad; nothing to write")
        write_pair_list(stage / "pairs.txt", pair_keys)
        with open(stage / "sources.txt", "w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(sources)
        if skip_bad:
            with open(stage / "skipped.txt", "w", encoding="utf-8", newline="\n") as handle:
                handle.writelines(f"{lq}\t{gt}\t{reason}\n" for lq, gt, reason in skipped)
        report = verify_dataset(stage)
        if report.problems:
            raise RuntimeError(f"verification of {stage} failed: " + "; ".join(report.problems))
    return ConversionSummary(Path(dst), len(pair_keys), len(pair_keys), len(stored_gt), skipped)


def verify_dataset(dst: str | os.PathLike[str]) -> DatasetReport:
    """Check a converted data set read-only: both LMDBs sound, every pair's keys present, sizes equal.

    Args:
        dst: Folder written by :func:`convert_dataset`.

    Returns:
        Counts and problems; each problem names the file and the key or line at fault.
    """
    folder = Path(dst)
    lq_shapes, problems = check_image_lmdb(folder / "lq.lmdb")
    gt_shapes, gt_problems = check_image_lmdb(folder / "gt.lmdb")
    problems += gt_problems
    pair_list = folder / "pairs.txt"
    try:
        pairs = read_pair_list(pair_list)
    except (OSError, PairListError) as error:
        return DatasetReport(len(lq_shapes), len(gt_shapes), 0, [*problems, f"{pair_list}: cannot be read ({error})"])
    for lq_key, gt_key in pairs:
        lq_shape, gt_shape = lq_shapes.get(lq_key), gt_shapes.get(gt_key)
        if lq_shape is None:
            problems.append(f"{pair_list}: lq key {lq_key!r} is not in lq.lmdb")
        if gt_shape is None:
            problems.append(f"{pair_list}: gt key {gt_key!r} is not in gt.lmdb")
        if lq_shape is not None and gt_shape is not None and lq_shape[:2] != gt_shape[:2]:
            problems.append(
                f"{pair_list}: pair {lq_key!r} / {gt_key!r} differs in size: lq {lq_shape[0]}x{lq_shape[1]}, "
                f"gt {gt_shape[0]}x{gt_shape[1]}"
            )
    return DatasetReport(len(lq_shapes), len(gt_shapes), len(pairs), problems)


def _encode_pair(task: _Task) -> _Encoded | str:
    """Read, check and PNG-encode one pair; returns the reason (naming the file) when it is bad."""
    try:
        if task.side_by_side:
            image = read_image(task.lq_path)
            width = image.shape[1]
            if width % 2:
                return f"{task.lq_path} is {width} pixels wide; a side-by-side image needs an even width"
            lq, gt = image[:, : width // 2], image[:, width // 2 :]
        else:
            lq, gt = read_image(task.lq_path), read_image(task.gt_path)
            if lq.shape[:2] != gt.shape[:2]:
                return (
                    f"lq {task.lq_path} is {lq.shape[0]}x{lq.shape[1]} but gt {task.gt_path} is "
                    f"{gt.shape[0]}x{gt.shape[1]} (height x width must match)"
                )
        return _Encoded(
            encode_png(np.ascontiguousarray(lq), path=task.lq_path),
            image_shape(lq),
            encode_png(np.ascontiguousarray(gt), path=task.gt_path) if task.encode_gt else None,
            image_shape(gt),
        )
    except ImageFileError as error:
        return str(error)


@contextmanager
def _encoded_pairs(tasks: Sequence[_Task], workers: int) -> Iterator[Iterator[_Encoded | str]]:
    """Yield the results of :func:`_encode_pair` in task order, computed here or by a process pool."""
    if workers == 1:
        yield map(_encode_pair, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_interrupt) as pool:
        yield _pool_rounds(pool, tasks, workers * _TASKS_PER_WORKER_ROUND)


def _pool_rounds(pool: Pool, tasks: Sequence[_Task], round_size: int) -> Iterator[_Encoded | str]:
    # Pool.imap queues its whole input at once, so rounds keep finished-but-unwritten images bounded.
    for start in range(0, len(tasks), round_size):
        yield from pool.imap(_encode_pair, tasks[start : start + round_size], chunksize=_CHUNK_SIZE)


def _ignore_interrupt() -> None:
    # Ctrl-C reaches the whole process group; the main process handles it and terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
