"""What can be known about a dataset before training starts, checked before anything is written.

:func:`check_dataset` builds the dataset from its section as BasicSR will, so that layouts, pair
counts and names fail at start-up, then reads what costs little:

- an LMDB root is an LMDB (``data.mdb`` opens), its ``meta_info.txt`` parses and every key it lists
  is stored; rainy and clean LMDBs list the same keys with the same sizes (scale 1);
- a training crop (``gt_size``) fits the images whose sizes ``meta_info.txt`` gives, unless the
  dataset pads or skips small pairs;
- the rainy side is not the clean side: the same root for both, or the first pairs identical byte for
  byte, trains an identity network (49 dB on validation, nothing learnt). ``allow_identity: true``
  in the section says it is meant.

Images whose bytes only turn out bad when decoded are left to the dataset, which names the file.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import lmdb
from basicsr.utils.registry import DATASET_REGISTRY

from erl_plugin.data.derain_dataset import is_lmdb, read_meta_info
from erl_plugin.data.lmdb_env import open_lmdb

IDENTITY_KEY = "allow_identity"
"""A dataset option that says identical rainy and clean images are meant (default false)."""

IDENTITY_SAMPLE = 4
"""How many pairs are compared byte for byte: all of them equal means an identity dataset."""


class DatasetCheckError(ValueError):
    """A dataset that cannot train as configured; the message names the key or file and the fix."""


def _is_lmdb(section: Mapping[str, Any]) -> bool:
    backend = section.get("io_backend") or {}
    return is_lmdb(str(section.get("dataroot_lq", "")), backend.get("type") if isinstance(backend, Mapping) else None)


def check_lmdb(root: str) -> dict[str, tuple[int, int]]:
    """The keys and (height, width) of a BasicSR LMDB, after checking that every listed key is stored.

    Raises:
        DatasetCheckError: ``root`` is not an LMDB, has no readable ``meta_info.txt``, or lists keys
            that ``data.mdb`` lacks (named, up to 5).
    """
    if not os.path.isfile(os.path.join(root, "data.mdb")):
        raise DatasetCheckError(f"{root} is not an LMDB (no data.mdb); create one with tools/create_lmdb.py")
    try:
        sizes = read_meta_info(root)
    except (OSError, ValueError) as error:
        raise DatasetCheckError(str(error)) from None
    try:
        with open_lmdb(root).begin(write=False) as txn:
            missing = [key for key in sizes if txn.get(key.encode("utf-8")) is None]
    except lmdb.Error as error:
        raise DatasetCheckError(f"{root} is not a readable LMDB: {error}") from None
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetCheckError(
            f"{root}: meta_info.txt lists {len(missing)} key(s) that data.mdb does not hold: {shown} "
            "(re-create the LMDB with tools/create_lmdb.py)"
        )
    return sizes


def _check_lmdb_pair(section: Mapping[str, Any], is_train: bool) -> None:
    lq_root, gt_root = str(section["dataroot_lq"]), str(section["dataroot_gt"])
    lq, gt = check_lmdb(lq_root), check_lmdb(gt_root)
    if section.get("pair_list") is None and not os.path.isfile(os.path.join(os.path.dirname(lq_root), "pairs.txt")):
        different = sorted(set(lq) ^ set(gt))
        if different:
            raise DatasetCheckError(
                f"{lq_root} and {gt_root} list different keys in meta_info.txt ({len(different)}, e.g. "
                f"{different[0]!r}): they are not one dataset's two sides"
            )
        resized = [key for key in lq if lq[key] != gt[key]]
        if resized:
            key = resized[0]
            raise DatasetCheckError(
                f"{lq_root}:{key} is {lq[key][1]}x{lq[key][0]} but {gt_root}:{key} is {gt[key][1]}x{gt[key][0]} "
                f"({len(resized)} pair(s) of different sizes; deraining pairs have one size)"
            )
    crop = section.get("gt_size")
    pads = section.get("type") == "DerainPairedDataset"  # pads or skips small pairs itself
    if is_train and crop and not pads:
        small = [key for key, (height, width) in gt.items() if min(height, width) < int(crop)]
        if small:
            height, width = gt[small[0]]
            raise DatasetCheckError(
                f"gt_size: {crop} but {gt_root}:{small[0]} is {width}x{height} ({len(small)} image(s) smaller "
                "than the crop); lower gt_size, or use type: DerainPairedDataset (small_images: pad or skip)"
            )


def _pair_paths(dataset: Any) -> list[tuple[str, str]]:
    """(rainy, clean) file paths or keys of a built dataset, for BasicSR's and the plugin's datasets."""
    if hasattr(dataset, "pairs"):
        return [(str(lq), str(gt)) for lq, gt in dataset.pairs]
    return [(str(item["lq_path"]), str(item["gt_path"])) for item in getattr(dataset, "paths", [])]


def identical_files(pairs: Sequence[tuple[str, str]]) -> bool:
    """Whether the first :data:`IDENTITY_SAMPLE` (rainy, clean) files are identical byte for byte."""
    sample = pairs[:IDENTITY_SAMPLE]
    for lq, gt in sample:
        if not (os.path.isfile(lq) and os.path.isfile(gt)) or os.path.getsize(lq) != os.path.getsize(gt):
            return False
        with open(lq, "rb") as lq_file, open(gt, "rb") as gt_file:
            if lq_file.read() != gt_file.read():
                return False
    return bool(sample)


def _first_pairs_identical(section: Mapping[str, Any], pairs: list[tuple[str, str]]) -> bool:
    if not pairs or section.get("layout") == "did":  # one side-by-side file holds both images
        return False
    if _is_lmdb(section):
        lq_env, gt_env = (open_lmdb(str(section[key])) for key in ("dataroot_lq", "dataroot_gt"))
        with lq_env.begin(write=False) as lq_txn, gt_env.begin(write=False) as gt_txn:
            sample = pairs[:IDENTITY_SAMPLE]
            return all(lq_txn.get(lq.encode("utf-8")) == gt_txn.get(gt.encode("utf-8")) for lq, gt in sample)
    return identical_files(pairs)


def check_identity(section: Mapping[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Refuse a dataset whose rainy side is its clean side, unless ``allow_identity: true``.

    Raises:
        DatasetCheckError: One root for both sides, or the first pairs identical byte for byte.
    """
    if section.get(IDENTITY_KEY) is True:
        return
    roots = [section.get(key) for key in ("dataroot_lq", "dataroot_gt")]
    if all(roots) and os.path.realpath(str(roots[0])) == os.path.realpath(str(roots[1])):
        raise DatasetCheckError(
            f"dataroot_lq and dataroot_gt are one folder ({roots[0]}): the rainy images would be the clean "
            f"ones and the network would learn the identity; point dataroot_lq at the rainy images "
            f"(or set {IDENTITY_KEY}: true if this is meant)"
        )
    if _first_pairs_identical(section, pairs):
        lq, gt = pairs[0]
        raise DatasetCheckError(
            f"the first {min(len(pairs), IDENTITY_SAMPLE)} pairs have identical rainy and clean images "
            f"({lq} = {gt}): the network would learn the identity; check dataroot_lq/dataroot_gt "
            f"(or set {IDENTITY_KEY}: true if this is meant)"
        )


def check_dataset(section: Mapping[str, Any], phase: str, is_train: bool, scale: int = 1) -> None:
    """Build the dataset of ``section`` (options key ``phase``) as BasicSR will, with the top-level
    ``scale``, and check what its files say (module docstring).

    Raises:
        DatasetCheckError: naming the key, file or value and the fix.
    """
    opt = {**section, "phase": phase.split("_")[0], "scale": scale}
    if _is_lmdb(section) and section.get("dataroot_lq") and section.get("dataroot_gt"):
        _check_lmdb_pair(section, is_train and opt["phase"] == "train")
    try:
        dataset = DATASET_REGISTRY.get(section["type"])(opt)
    except (OSError, ValueError, KeyError, AssertionError) as error:
        raise DatasetCheckError(f"{type(error).__name__}: {error}") from None
    if len(dataset) == 0:
        raise DatasetCheckError("no image pairs: the folders or LMDBs hold nothing to pair")
    check_identity(section, _pair_paths(dataset))
