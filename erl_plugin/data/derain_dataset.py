"""Paired rainy/clean dataset for BasicSR, from image folders or LMDBs, with many-to-one pairs.

:class:`DerainPairedDataset` reads what :class:`basicsr.data.PairedImageDataset` reads, plus pair
lists (several rainy images sharing one clean image, as in DDN-Data), grayscale/16-bit/RGBA inputs,
small-image padding or skipping, and error messages that name the file (or ``<lmdb>:<key>``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from erl_plugin.data.dataset_keys import check_keys
from erl_plugin.data.images import ImageFileError, as_bgr, read_image, read_image_size
from erl_plugin.data.layouts import (
    IMAGE_EXTENSIONS,
    LAYOUTS,
    SIDE_BY_SIDE_LAYOUTS,
    find_pairs,
    scan_images,
    source_root,
)
from erl_plugin.data.lmdb_env import open_lmdb
from erl_plugin.data.pair_list import read_pair_list

__all__ = ["DerainPairedDataset", "ImageConversionWarning"]

LMDB_PAIRS_FILE = "pairs.txt"
_PHASES = ("train", "val", "test")
_SMALL_IMAGES = ("pad", "skip")
_HOLD_OUT_PARTS = ("rest", "held")
_BACKENDS = ("disk", "lmdb")
# PairedImageDataset options this dataset does not implement; accepting them silently would mislead.
_UNSUPPORTED = {
    "mean": "normalisation is not supported",
    "std": "normalisation is not supported",
    "color": "only 3-channel BGR->RGB output is supported",
    "meta_info_file": "use 'pair_list' instead",
    "filename_tmpl": "use 'pair_list' for differing names",
}


_OWN_KEYS = {
    "dataroot_lq": "rainy folder or LMDB",
    "dataroot_gt": "clean folder or LMDB",
    "io_backend": "{type: disk} or {type: lmdb}",
    "pair_list": "pair-list file",
    "layout": f"an original folder's layout: {', '.join(LAYOUTS)}",
    "dataroot": "the folder read with layout",
    "lq_dir": "rainy folder of the pairs layout",
    "gt_dir": "clean folder of the pairs layout",
    "gt_size": "crop side",
    "use_crop": "random crops",
    "use_hflip": "horizontal flips",
    "use_rot": "vertical flips and rotations",
    "allow_identity": "true: identical rainy and clean images are meant (the start-up check refuses them)",
    "small_images": "pad or skip",
    "hold_out": "{share: 0.05, keep: rest | held}: a fixed split of the pairs by clean image",
    **{key: f"refused: {reason}" for key, reason in _UNSUPPORTED.items()},
}


class ImageConversionWarning(UserWarning):
    """An input image was converted to 3-channel 8-bit-range BGR (grayscale, 16-bit or alpha)."""


def _option_error(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"DerainPairedDataset option {key!r} = {value!r} is invalid: {allowed}")


def is_lmdb(root: str, backend: str | None) -> bool:
    """Whether a data root is read as a BasicSR LMDB: ``io_backend.type: lmdb``, or a ``.lmdb`` folder."""
    return backend == "lmdb" or root.rstrip("/\\").endswith(".lmdb")


def read_meta_info(lmdb_path: str) -> dict[str, tuple[int, int]]:
    """Keys of a BasicSR LMDB in meta_info.txt order, with their (height, width)."""
    meta_path = os.path.join(lmdb_path, "meta_info.txt")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"LMDB {lmdb_path} has no meta_info.txt (BasicSR LMDBs need one)")
    sizes: dict[str, tuple[int, int]] = {}
    with open(meta_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            key = fields[0].split(".", 1)[0]
            try:
                height, width = (int(v) for v in fields[1].strip("()").split(",")[:2])
            except (IndexError, ValueError):
                raise ValueError(
                    f"{meta_path}:{number}: expected '<key>.png (h,w,c) <level>', got {line.rstrip()!r}"
                ) from None
            sizes[key] = (height, width)
    if not sizes:
        raise ValueError(f"{meta_path} lists no keys")
    return sizes


def _describe(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@DATASET_REGISTRY.register()
class DerainPairedDataset(data.Dataset):
    """Rainy (lq) / clean (gt) image pairs for training and validating deraining networks.

    Items are BasicSR's paired dict ``{'lq', 'gt', 'lq_path', 'gt_path'}``: float32 RGB CHW tensors
    in [0, 1]; the paths are file paths for folders and keys for LMDBs (as in PairedImageDataset).
    Every image is decoded unchanged and made 3-channel BGR in [0, 1]: grayscale is repeated to
    three channels, 16-bit is divided by 65535 and alpha is dropped; each kind of conversion is
    warned (:class:`ImageConversionWarning`) once per dataset instance (once per DataLoader worker).

    Args:
        opt: BasicSR dataset options (read, never modified):
            dataroot_lq (str): Folder of rainy images, or an LMDB folder.
            dataroot_gt (str): Folder of clean images, or an LMDB folder.
            io_backend (dict): ``{'type': 'disk'}`` or ``{'type': 'lmdb'}``. A root ending in
                ``.lmdb`` is read as an LMDB either way. Default: ``{'type': 'disk'}``.
            layout (str | None): Read an original data set folder as published instead of two
                roots: one of ``rain100h``, ``rain100l``, ``rain200h``, ``rain200l``, ``rain13k``,
                ``ddn``, ``did`` (side-by-side: left half lq, right half gt), ``raindrop``, ``pairs``
                (with ``lq_dir``/``gt_dir``, default ``input``/``target``) or ``list`` (see
                :mod:`erl_plugin.data.layouts`). Then ``dataroot`` names the folder (the pair-list
                file for ``list``) and ``dataroot_lq``/``dataroot_gt``/``pair_list`` are not used.
                Default: None.
            pair_list (str | None): Pair-list file (:mod:`erl_plugin.data.pair_list`) of
                ``<lq> <gt>`` lines: paths relative to the roots for folders, keys for LMDBs. A gt
                entry may repeat (many rainy images share one clean image). Default: None, which
                pairs files with identical relative paths for folders (recursive, sorted; png, jpg,
                jpeg, bmp, tif, tiff, webp), and for LMDBs uses ``pairs.txt`` next to the two LMDBs
                if present, else requires identical meta_info.txt keys.
            phase (str): ``'train'``, ``'val'`` or ``'test'`` (BasicSR sets it).
            gt_size (int | None): Side of the random square crop. Default: None (no crop).
            use_crop (bool): Random-crop to ``gt_size``. Default: True if ``gt_size`` is set and
                phase is ``'train'``, else False.
            use_hflip (bool): Random horizontal flips. Default: False.
            use_rot (bool): Random vertical flips and 90-degree rotations. Default: False.
            small_images (str): For cropping, a pair smaller than ``gt_size``: ``'pad'`` reflects
                it up to ``gt_size`` (bottom and right), ``'skip'`` drops it when the dataset is
                built. Default: ``'pad'``.
            hold_out (dict | None): ``{share: s, keep: rest | held}``: split the pairs by their clean
                image, a share ``s`` held out (chosen by a hash of the clean image's name: the same split
                on every machine and in any order; all rainy versions of one clean image fall on the
                same side), and keep the ``rest`` (to train on) or the ``held`` ones (to validate on, e.g.
                for ``PlateauLR``, without touching the test set). Default: None (every pair).
            scale (int): Must be 1 if given (BasicSR adds it). Default: 1.

    Raises:
        ValueError: For an invalid option, a malformed pair list, unpaired LMDB keys or (when
            reading) mismatched sizes and undecodable images.
        FileNotFoundError: For a missing root, pair list or counterpart file.
    """

    OPTION_KEYS = _OWN_KEYS
    """The keys this dataset reads (besides BasicSR's): what the options check accepts."""

    def __init__(self, opt: Mapping[str, Any]) -> None:
        super().__init__()
        self.opt = copy.deepcopy(dict(opt))
        self._check_options()
        self._warned: set[str] = set()
        self._lmdb_sizes: dict[str, dict[str, tuple[int, int]]] = {}
        self.pairs = self._build_pairs()
        if self.hold_out is not None:
            self.pairs = self._split(self.pairs)
        if self.use_crop and self.small_images == "skip":
            self._skip_small_pairs()

    def _check_options(self) -> None:
        opt = self.opt
        check_keys("DerainPairedDataset", opt, _OWN_KEYS)
        for key, reason in _UNSUPPORTED.items():
            if opt.get(key) is not None:
                raise _option_error(key, opt[key], reason)
        backend = opt.get("io_backend") or {"type": "disk"}
        if not isinstance(backend, Mapping) or backend.get("type") not in _BACKENDS:
            raise _option_error("io_backend", backend, f"expected a dict with 'type' in {_BACKENDS}")
        self.layout: str | None = opt.get("layout")
        if self.layout is None:
            self._check_roots(backend)
        else:
            self._check_layout()

        self.phase = opt.get("phase")
        if self.phase not in _PHASES:
            raise _option_error("phase", self.phase, f"expected one of {_PHASES}")
        if opt.get("scale", 1) != 1:
            raise _option_error("scale", opt["scale"], "deraining keeps the size: expected 1")

        self.gt_size: int | None = opt.get("gt_size")
        if self.gt_size is not None and (
            isinstance(self.gt_size, bool) or not isinstance(self.gt_size, int) or self.gt_size < 1
        ):
            raise _option_error("gt_size", self.gt_size, "expected a positive integer or None")
        flags = {"use_crop": self.gt_size is not None and self.phase == "train", "use_hflip": False, "use_rot": False}
        for key, default in flags.items():
            value = opt.get(key, default)
            if value is None:
                value = default
            if not isinstance(value, bool):
                raise _option_error(key, value, "expected true or false")
            flags[key] = value
        self.use_crop, self.use_hflip, self.use_rot = flags["use_crop"], flags["use_hflip"], flags["use_rot"]
        if self.use_crop and self.gt_size is None:
            raise _option_error("use_crop", True, "cropping needs 'gt_size' (a positive integer)")
        self.small_images = opt.get("small_images", "pad")
        if self.small_images not in _SMALL_IMAGES:
            raise _option_error("small_images", self.small_images, f"expected one of {_SMALL_IMAGES}")
        self.hold_out: Mapping[str, Any] | None = opt.get("hold_out")
        if self.hold_out is not None:
            share = self.hold_out.get("share") if isinstance(self.hold_out, Mapping) else None
            if (
                not isinstance(self.hold_out, Mapping)
                or set(self.hold_out) != {"share", "keep"}
                or isinstance(share, bool)
                or not isinstance(share, int | float)
                or not 0 < share < 1
                or self.hold_out.get("keep") not in _HOLD_OUT_PARTS
            ):
                raise _option_error(
                    "hold_out", self.hold_out, "expected {share: a number in (0, 1), keep: rest or held}"
                )

    def _check_roots(self, backend: Mapping[str, Any]) -> None:
        opt = self.opt
        roots = {}
        for key in ("dataroot_lq", "dataroot_gt"):
            value = opt.get(key)
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise _option_error(key, value, "expected a folder path")
            if not os.path.isdir(value):
                raise FileNotFoundError(f"DerainPairedDataset option {key!r} = {os.fspath(value)!r}: no such folder")
            roots[key] = os.fspath(value)
        self.lq_root, self.gt_root = roots["dataroot_lq"], roots["dataroot_gt"]
        kinds = {is_lmdb(root, backend["type"]) for root in roots.values()}
        if len(kinds) != 1:
            raise _option_error(
                "dataroot_lq", self.lq_root, f"lq and gt must both be folders or both LMDBs (gt: {self.gt_root!r})"
            )
        self.lmdb = kinds.pop()
        if self.lmdb:
            for key, root in roots.items():
                if not os.path.isfile(os.path.join(root, "data.mdb")):
                    raise FileNotFoundError(f"DerainPairedDataset option {key!r} = {root!r}: no data.mdb (not an LMDB)")

        pair_list = opt.get("pair_list")
        if pair_list is not None:
            if not isinstance(pair_list, (str, os.PathLike)):
                raise _option_error("pair_list", pair_list, "expected a file path or None")
            if not os.path.isfile(pair_list):
                raise FileNotFoundError(
                    f"DerainPairedDataset option 'pair_list' = {os.fspath(pair_list)!r}: no such file"
                )
            pair_list = os.fspath(pair_list)
        self.pair_list: str | None = pair_list

    def _check_layout(self) -> None:
        opt = self.opt
        if self.layout not in LAYOUTS:
            raise _option_error("layout", self.layout, f"expected one of {', '.join(LAYOUTS)}")
        for key in ("dataroot_lq", "dataroot_gt", "pair_list"):
            if opt.get(key) is not None:
                raise _option_error(key, opt[key], "not used with 'layout' (it pairs the files under 'dataroot')")
        source = opt.get("dataroot")
        if not isinstance(source, (str, os.PathLike)) or not os.path.exists(source):
            raise FileNotFoundError(f"DerainPairedDataset option 'dataroot' = {source!r}: no such folder or file")
        self.source = os.fspath(source)
        self.lq_root = self.gt_root = str(source_root(self.layout, self.source))
        self.lmdb, self.pair_list = False, None

    def _build_pairs(self) -> list[tuple[str, str]]:
        if self.layout is not None:
            folders = {"lq_dir": self.opt.get("lq_dir", "input"), "gt_dir": self.opt.get("gt_dir", "target")}
            found = find_pairs(self.layout, self.source, **folders)
            return [(os.path.join(self.lq_root, lq), os.path.join(self.gt_root, gt)) for lq, gt in found]
        if self.lmdb:
            return self._lmdb_pairs()
        if self.pair_list is not None:
            pairs = read_pair_list(self.pair_list)
            for lq, gt in pairs:
                for root, name in ((self.lq_root, lq), (self.gt_root, gt)):
                    if not os.path.isfile(os.path.join(root, name)):
                        raise FileNotFoundError(
                            f"{self.pair_list}: {os.path.join(root, name)} (listed as {name!r}) does not exist"
                        )
            return [(os.path.join(self.lq_root, lq), os.path.join(self.gt_root, gt)) for lq, gt in pairs]
        lq_names, gt_names = scan_images(self.lq_root), scan_images(self.gt_root)
        for side, names, root, other in (
            ("lq", lq_names, self.lq_root, set(gt_names)),
            ("gt", gt_names, self.gt_root, set(lq_names)),
        ):
            alone = [os.path.join(root, name) for name in names if name not in other]
            if alone:
                counterpart = self.gt_root if side == "lq" else self.lq_root
                raise FileNotFoundError(
                    f"{len(alone)} {side} image(s) have no counterpart with the same relative path in "
                    f"{counterpart}: {_describe(alone)} (give a 'pair_list' for differing names)"
                )
        if not lq_names:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.lq_root}")
        return [(os.path.join(self.lq_root, name), os.path.join(self.gt_root, name)) for name in lq_names]

    def _lmdb_pairs(self) -> list[tuple[str, str]]:
        self._lmdb_sizes = {"lq": read_meta_info(self.lq_root), "gt": read_meta_info(self.gt_root)}
        parent = os.path.dirname(os.path.realpath(self.lq_root))
        pair_list = self.pair_list
        if pair_list is None and parent == os.path.dirname(os.path.realpath(self.gt_root)):
            candidate = os.path.join(parent, LMDB_PAIRS_FILE)
            pair_list = candidate if os.path.isfile(candidate) else None
        if pair_list is None:
            lq_keys, gt_keys = list(self._lmdb_sizes["lq"]), set(self._lmdb_sizes["gt"])
            if set(lq_keys) != gt_keys:
                only = sorted(set(lq_keys) ^ gt_keys)
                raise ValueError(
                    f"LMDBs {self.lq_root} and {self.gt_root} list different keys in meta_info.txt "
                    f"(in one only: {_describe(only)}) and there is no pair list ({LMDB_PAIRS_FILE} next to "
                    "them or the 'pair_list' option)"
                )
            return [(key, key) for key in lq_keys]
        pairs = read_pair_list(pair_list)
        for lq, gt in pairs:
            for side, root, key in (("lq", self.lq_root, lq), ("gt", self.gt_root, gt)):
                if key not in self._lmdb_sizes[side]:
                    raise ValueError(f"{pair_list}: key {key!r} is not in {root}/meta_info.txt")
        return pairs

    def _split(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs :attr:`hold_out` keeps (see the class docstring)."""
        share, keep = float(self.hold_out["share"]), self.hold_out["keep"]

        def held(gt: str) -> bool:
            name = gt if self.lmdb else os.path.relpath(gt, self.gt_root)
            digest = hashlib.sha256(name.replace(os.sep, "/").encode("utf-8")).hexdigest()
            return int(digest[:12], 16) / 16**12 < share

        kept = [(lq, gt) for lq, gt in pairs if held(gt) == (keep == "held")]
        if not kept:
            raise ValueError(
                f"DerainPairedDataset option 'hold_out' = {dict(self.hold_out)}: no pair of {len(pairs)} is "
                f"{'held out' if keep == 'held' else 'left'}; choose another share"
            )
        return kept

    def _skip_small_pairs(self) -> None:
        size = self.gt_size
        kept = []
        for lq, gt in self.pairs:
            if self.lmdb:
                sizes = (self._lmdb_sizes["lq"][lq], self._lmdb_sizes["gt"][gt])
            elif self.layout in SIDE_BY_SIDE_LAYOUTS:
                height, width = read_image_size(lq)
                sizes = ((height, width // 2),)
            else:
                sizes = (read_image_size(lq), read_image_size(gt))
            if all(min(hw) >= size for hw in sizes):
                kept.append((lq, gt))
        skipped = len(self.pairs) - len(kept)
        if skipped:
            name = self.opt.get("name", self.lq_root)
            get_root_logger().warning(
                f"DerainPairedDataset {name!r}: skipped {skipped} of {len(self.pairs)} pairs smaller than "
                f"gt_size {size} (small_images: skip)"
            )
        if not kept:
            raise ValueError(f"DerainPairedDataset: every pair is smaller than gt_size {size}; nothing left")
        self.pairs = kept

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        lq_path, gt_path = self.pairs[index]
        if self.layout in SIDE_BY_SIDE_LAYOUTS:
            img_lq, img_gt, lq_name, gt_name = self._load_side_by_side(lq_path)
        else:
            img_lq, lq_name = self._load(lq_path, self.lq_root)
            img_gt, gt_name = self._load(gt_path, self.gt_root)
        if img_lq.shape[:2] != img_gt.shape[:2]:
            raise ValueError(
                f"size mismatch: lq {lq_name} is {img_lq.shape[0]}x{img_lq.shape[1]} but gt {gt_name} is "
                f"{img_gt.shape[0]}x{img_gt.shape[1]} (height x width must match)"
            )
        if self.use_crop:
            img_lq, img_gt = self._pad_to_crop(img_lq), self._pad_to_crop(img_gt)
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.gt_size, 1, gt_name)
        if self.use_hflip or self.use_rot:
            img_gt, img_lq = augment([img_gt, img_lq], self.use_hflip, self.use_rot)
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        return {"lq": img_lq, "gt": img_gt, "lq_path": lq_path, "gt_path": gt_path}

    def _load(self, path: str, root: str) -> tuple[np.ndarray, str]:
        """Decode one image to float32 BGR in [0, 1]; returns it and the name used in messages."""
        if not self.lmdb:
            return self._to_bgr_float(read_image(path), path), path
        name = f"{root}:{path}"
        with open_lmdb(root).begin(write=False) as txn:
            value = txn.get(path.encode("utf-8"))
            image = None if value is None else cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
        if value is None:
            raise ImageFileError(f"{name}: key {path!r} is listed in meta_info.txt but missing from data.mdb")
        if image is None or image.size == 0:
            raise ImageFileError(f"{name}: the stored bytes cannot be decoded as an image")
        return self._to_bgr_float(image, name), name

    def _load_side_by_side(self, path: str) -> tuple[np.ndarray, np.ndarray, str, str]:
        """One ``[ rainy | clean ]`` image (DID-MDN): the left half is lq, the right half gt."""
        image, name = self._load(path, self.lq_root)
        width = image.shape[1]
        if width % 2:
            raise ImageFileError(f"{name} is {width} pixels wide: a side-by-side pair needs an even width")
        return image[:, : width // 2], image[:, width // 2 :], f"{name}#left", f"{name}#right"

    def _to_bgr_float(self, image: np.ndarray, name: str) -> np.ndarray:
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        elif image.dtype == np.uint16:
            self._warn_once("16-bit", f"{name} is 16-bit: scaled to [0, 1] by 65535")
            image = image.astype(np.float32) / 65535.0
        else:
            raise ImageFileError(f"image {name} has unsupported sample type {image.dtype} (expected 8 or 16 bit)")
        if image.ndim == 2 or image.shape[2] == 1:
            self._warn_once("grayscale", f"{name} is grayscale: repeated to 3 channels")
        elif image.shape[2] == 4:
            self._warn_once("alpha", f"{name} has an alpha channel: dropped (not composited)")
        return as_bgr(image, name)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(
                f"DerainPairedDataset: {message}; further {kind} images are converted silently",
                ImageConversionWarning,
                stacklevel=2,
            )

    def _pad_to_crop(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        bottom, right = max(0, self.gt_size - height), max(0, self.gt_size - width)
        if not bottom and not right:
            return image
        # Reflection needs at least two pixels along a padded side.
        reflectable = (not bottom or height > 1) and (not right or width > 1)
        border = cv2.BORDER_REFLECT_101 if reflectable else cv2.BORDER_REPLICATE
        return cv2.copyMakeBorder(image, 0, bottom, 0, right, border)
