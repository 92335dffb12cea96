"""Paired deraining data sets as they lie on disk."""

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from erl_plugin.data.pair_list import read_pair_list

_RAINY_NAME = re.compile(r"rain-([1-9][0-9]*)\.(png|jpg|jpeg|bmp)", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """One rainy image and its clean target (file paths); ``number`` is the N of ``rain-N``."""

    number: int
    rainy: str
    clean: str

    @property
    def name(self) -> str:
        return f"rain-{self.number}"


def raintrainh_pairs(folder: str | os.PathLike[str]) -> list[Pair]:
    """``rain-N.png`` with ``norain-N.png`` in one folder, sorted by N.

    This is the layout of RainTrainH (Rain100H's training set) and of the synthetic rain data.

    Raises:
        FileNotFoundError: ``folder`` is missing, holds no ``rain-N`` image, or one lacks its
            ``norain-N`` twin (both files named).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: not a directory")
    pairs = []
    for name in os.listdir(folder):
        match = _RAINY_NAME.fullmatch(name)
        if match:
            rainy, clean = os.path.join(folder, name), os.path.join(folder, f"no{name}")
            if not os.path.isfile(clean):
                raise FileNotFoundError(f"{rainy} has no clean image {clean}")
            pairs.append(Pair(int(match.group(1)), rainy, clean))
    if not pairs:
        raise FileNotFoundError(f"{folder}: no rain-N.png / norain-N.png pairs")
    return sorted(pairs, key=lambda pair: pair.number)


# --- Source layouts for conversion -------------------------------------------------------------------
#
# Each ``*_layout`` function below maps a source folder (or list file) to ``(lq, gt)`` pairs of paths
# relative to it, with ``/`` separators, in natural order of the lq path (``rain-2`` before ``rain-10``).
# Matching is by name without extension, so ``a.png`` and ``a.jpg`` side by side are an error rather
# than a silent choice. Hidden files (``.``-prefixed) and non-image files are ignored; an image file
# that does not fit the layout's naming is an error, so a wrong ``--layout`` fails loudly.

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File extensions read as images everywhere in the plugin (compared in lower case)."""
_JPEG_EXTENSIONS = (".jpg", ".jpeg")


def is_image_name(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether a file name is an image: an extension of ``extensions`` (any case), not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def scan_images(
    root: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS, *, recursive: bool = True
) -> list[str]:
    """Relative ``/``-separated paths of the images under ``root``, sorted; the one folder scan of the plugin.

    Hidden files and folders are skipped. Subfolders are searched (unless ``recursive`` is False), a
    symlinked one like any other, but each real directory once: a folder reached again, through a
    link back to a parent (a loop) or a second link to it, is not searched again, so a loop neither
    repeats images nor runs forever. Of two paths to one directory, the first reached (sorted, depth
    first) is the one listed.

    Args:
        root: Folder to scan.
        extensions: File extensions that are images (any case). Default: :data:`IMAGE_EXTENSIONS`.
        recursive: Search subfolders. Default: True.
    """
    found = []
    visited: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a second way into a directory already scanned
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders[:] = sorted(name for name in subfolders if recursive and not name.startswith("."))
        prefix = Path(os.path.relpath(folder, root)).as_posix()
        found += [name if prefix == "." else f"{prefix}/{name}" for name in files if is_image_name(name, extensions)]
    return sorted(found)


_NUMBER = r"(?P<id>[0-9]+)"

RelativePairs = list[tuple[str, str]]


class LayoutError(ValueError):
    """A source folder does not match the layout asked for; the message names the file or folder."""


def natural_key(path: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders digit runs by value (``rain-2`` before ``rain-10``), ties broken by the text."""
    parts = re.split(r"([0-9]+)", path)
    # re.split with one capturing group puts text at even and digits at odd positions, so the tuples
    # of two paths always compare str with str and int with int.
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), path


def rain100_layout(src: str | os.PathLike[str]) -> RelativePairs:
    """Rain100H / Rain100L in the original release, test or training form (detected).

    Test form (``SRC`` is the test folder)::

        Rain100H/
        ├── norain-001.png      clean
        ├── norain-002.png
        └── rainy/
            ├── rain-001.png    rainy, pairs with norain-001.png
            └── rain-002.png

    Training form (RainTrainH / RainTrainL, ``SRC`` is that folder)::

        RainTrainH/
        ├── norain-1.png        clean
        ├── rain-1.png          rainy, pairs with norain-1.png
        └── ...

    Raises:
        LayoutError: For a folder of neither form (a repack with ``input/`` + ``target/`` is named
            as such: use ``--layout rain13k`` or ``pairs``), an unpaired or duplicate image.
    """
    root = _existing_folder(src, "rain100h/rain100l")
    if (root / "rainy").is_dir():
        rainy = _named_images(root / "rainy", {"lq": rf"rain-{_NUMBER}"}, "rain100 test form (rainy/rain-N)")
        clean = _named_images(root, {"gt": rf"norain-{_NUMBER}"}, "rain100 test form (norain-N next to rainy/)")
        return _join(root, rainy["lq"], clean["gt"], "rainy/", "")
    repack = _repack_folders(root)
    if repack is not None:
        raise LayoutError(
            f"{root} holds {repack[0]}/ and {repack[1]}/ with matching names, a repack of the data set: "
            "use --layout rain13k (or --layout pairs --lq-dir ... --gt-dir ...)"
        )
    found = _named_images(
        root,
        {"lq": rf"rain-{_NUMBER}", "gt": rf"norain-{_NUMBER}"},
        "rain100: norain-N.png + rainy/rain-N.png (test) or rain-N.png + norain-N.png in one folder (train)",
    )
    return _join(root, found["lq"], found["gt"], "", "")


def rain200_layout(src: str | os.PathLike[str]) -> RelativePairs:
    """Rain200H / Rain200L in the JORDER release; ``SRC`` is one split folder.

    Tree::

        rain_data_train_Heavy/
        ├── norain/
        │   ├── norain-1.png      clean
        │   └── ...
        └── rain/
            └── X2/
                ├── norain-1x2.png    rainy, pairs with norain/norain-1.png
                └── ...

    Raises:
        LayoutError: For a missing ``rain/X2`` or ``norain`` folder, an unpaired or duplicate image.
    """
    root = _existing_folder(src, "rain200h/rain200l")
    for sub in ("rain/X2", "norain"):
        if not (root / sub).is_dir():
            raise LayoutError(f"{root}: no {sub}/ folder; rain200 expects rain/X2/norain-Nx2.png + norain/norain-N.png")
    rainy = _named_images(root / "rain" / "X2", {"lq": rf"norain-{_NUMBER}x2"}, "rain200 (rain/X2/norain-Nx2)")
    clean = _named_images(root / "norain", {"gt": rf"norain-{_NUMBER}"}, "rain200 (norain/norain-N)")
    return _join(root, rainy["lq"], clean["gt"], "rain/X2/", "norain/")


def rain13k_layout(src: str | os.PathLike[str]) -> RelativePairs:
    """The Restormer / MPRNet repack (Rain13K and its test sets): two folders with identical names.

    Tree (``input``/``target`` or ``Source``/``Target``, any letter case, searched recursively)::

        Rain13K/
        ├── input/
        │   ├── 1.jpg        rainy
        │   └── sub/2.jpg
        └── target/
            ├── 1.jpg        clean, pairs with input/1.jpg
            └── sub/2.jpg

    Raises:
        LayoutError: For no (or more than one) such folder pair, an unpaired or duplicate image.
    """
    root = _existing_folder(src, "rain13k")
    repack = _repack_folders(root)
    if repack is None:
        raise LayoutError(f"{root}: rain13k expects two subfolders input/ + target/ (or Source/ + Target/)")
    return pairs_layout(root, lq_dir=repack[0], gt_dir=repack[1])


def ddn_layout(src: str | os.PathLike[str]) -> RelativePairs:
    """DDN-Data (Rain14000): 14 rainy renderings share one clean image.

    Tree::

        DDN-Data/
        ├── ground_truth/
        │   ├── 1.jpg          clean
        │   └── ...
        └── rainy_image/
            ├── 1_1.jpg        rainy, pairs with ground_truth/1.jpg
            ├── ...
            └── 1_14.jpg

    Raises:
        LayoutError: For a missing folder, a rainy image without clean image, a clean image no rainy
            image uses, or a duplicate name.
    """
    root = _existing_folder(src, "ddn")
    for sub in ("rainy_image", "ground_truth"):
        if not (root / sub).is_dir():
            raise LayoutError(f"{root}: no {sub}/ folder; ddn expects rainy_image/I_K.jpg + ground_truth/I.jpg")
    rainy = _named_images(root / "rainy_image", {"lq": r"(?P<id>[0-9]+_[0-9]+)"}, "ddn (rainy_image/I_K)")
    clean = _named_images(root / "ground_truth", {"gt": _NUMBER}, "ddn (ground_truth/I)")

    def clean_id(rainy_id: str) -> str:
        return rainy_id.split("_")[0]

    return _join(root, rainy["lq"], clean["gt"], "rainy_image/", "ground_truth/", gt_id=clean_id)


def did_layout(src: str | os.PathLike[str]) -> RelativePairs:
    """DID-MDN: side-by-side JPEGs, left half rainy, right half clean; any ``*.jpg`` under ``SRC``.

    Tree (searched recursively; each file is both lq and gt, split at conversion)::

        DID-MDN-training/
        ├── Rain_Heavy/train2018new/
        │   ├── 1.jpg          1024x512: [ rainy | clean ]
        │   └── ...
        ├── Rain_Medium/train2018new/...
        └── Rain_Light/train2018new/...

    Returns:
        ``(path, path)`` for each JPEG: the same file on both sides.

    Raises:
        LayoutError: For no JPEG, or two files of one name (``1.jpg`` and ``1.jpeg``).
    """
    root = _existing_folder(src, "did")
    files = _image_files(root, extensions=_JPEG_EXTENSIONS)
    if not files:
        raise LayoutError(f"{root}: no .jpg files; did expects side-by-side JPEGs (rainy left, clean right)")
    return [(path, path) for path in sorted(files.values(), key=natural_key)]


def raindrop_layout(src: str | os.PathLike[str]) -> RelativePairs:
    """Raindrop (AGAN-Data); ``SRC`` is the ``train``, ``test_a`` or ``test_b`` folder.

    Tree::

        test_a/
        ├── data/
        │   ├── 0_rain.png     rainy
        │   └── ...
        └── gt/
            ├── 0_clean.png    clean, pairs with data/0_rain.png
            └── ...

    Raises:
        LayoutError: For a missing folder, an unpaired or duplicate image.
    """
    root = _existing_folder(src, "raindrop")
    for sub in ("data", "gt"):
        if not (root / sub).is_dir():
            raise LayoutError(f"{root}: no {sub}/ folder; raindrop expects data/N_rain.png + gt/N_clean.png")
    rainy = _named_images(root / "data", {"lq": rf"{_NUMBER}_rain"}, "raindrop (data/N_rain)")
    clean = _named_images(root / "gt", {"gt": rf"{_NUMBER}_clean"}, "raindrop (gt/N_clean)")
    return _join(root, rainy["lq"], clean["gt"], "data/", "gt/")


def pairs_layout(src: str | os.PathLike[str], *, lq_dir: str = "input", gt_dir: str = "target") -> RelativePairs:
    """Two image folders under ``SRC`` whose files match by relative path without extension.

    Tree (defaults shown; any depth of subfolders)::

        SRC/
        ├── input/             --lq-dir
        │   ├── a.png          rainy
        │   └── city/b.jpg
        └── target/            --gt-dir
            ├── a.png          clean, pairs with input/a.png
            └── city/b.png     clean, pairs with input/city/b.jpg

    Args:
        src: Folder holding the two image folders.
        lq_dir: Rainy folder, relative to ``src``. Default: ``input``.
        gt_dir: Clean folder, relative to ``src``. Default: ``target``.

    Raises:
        LayoutError: For a missing folder, an unpaired or duplicate image.
    """
    root = _existing_folder(src, "pairs")
    sides: list[tuple[dict[str, str], str]] = []
    for role, sub in (("lq", lq_dir), ("gt", gt_dir)):
        folder = root / sub
        if not folder.is_dir():
            raise LayoutError(f"{root}: no {role} folder {sub!r}; pairs expects SRC/{lq_dir}/ and SRC/{gt_dir}/")
        prefix = Path(os.path.normpath(sub)).as_posix() + "/"
        files = _image_files(folder)
        if not files:
            raise LayoutError(f"{folder}: no image files")
        sides.append((files, prefix))
    (lq, lq_prefix), (gt, gt_prefix) = sides
    return _join(root, lq, gt, lq_prefix, gt_prefix)


def list_layout(src: str | os.PathLike[str]) -> RelativePairs:
    """A pair-list file (``<lq><TAB><gt>`` per line), paths relative to the file's folder.

    Tree::

        SRC = pairs.txt        "rainy/a.png<TAB>clean/a.png" per line
        rainy/a.png
        clean/a.png

    Many lq images may share one gt image. Relative paths are normalised (``./a.png`` is ``a.png``).

    Raises:
        LayoutError: For an lq image listed twice, two files of one name (``a.png`` and ``a.jpg``) on
            one side, or a listed file that does not exist.
        PairListError: For a malformed list (see :mod:`erl_plugin.data.pair_list`).
    """
    list_file = Path(src)
    if not list_file.is_file():
        raise LayoutError(f"{list_file}: not a file; the list layout expects a pair-list file")
    root = list_file.parent
    pairs: RelativePairs = []
    listed_lq: set[str] = set()
    stems: dict[str, dict[str, str]] = {"lq": {}, "gt": {}}
    for lq, gt in read_pair_list(list_file):
        lq, gt = Path(os.path.normpath(lq)).as_posix(), Path(os.path.normpath(gt)).as_posix()
        if lq in listed_lq:
            raise LayoutError(f"{list_file}: lq file {lq} is listed twice")
        listed_lq.add(lq)
        for role, path in (("lq", lq), ("gt", gt)):
            if not (root / path).is_file():
                raise LayoutError(f"{list_file}: {role} file {root / path} does not exist")
            previous = stems[role].setdefault(strip_extension(path), path)
            if previous != path:
                raise LayoutError(f"{list_file}: {previous} and {path} have the same name (keys would collide)")
        pairs.append((lq, gt))
    return sorted(pairs, key=lambda pair: natural_key(pair[0]))


def strip_extension(path: str) -> str:
    """``path`` without its extension (``a/b.png`` -> ``a/b``)."""
    head, name = path.rsplit("/", 1) if "/" in path else ("", path)
    stem = os.path.splitext(name)[0]
    return f"{head}/{stem}" if head else stem


LAYOUTS: dict[str, Callable[[str | os.PathLike[str]], RelativePairs]] = {
    "rain100h": rain100_layout,
    "rain100l": rain100_layout,
    "rain200h": rain200_layout,
    "rain200l": rain200_layout,
    "rain13k": rain13k_layout,
    "ddn": ddn_layout,
    "did": did_layout,
    "raindrop": raindrop_layout,
    "pairs": pairs_layout,
    "list": list_layout,
}
"""Layout name -> function listing its ``(lq, gt)`` relative paths (``pairs`` also takes folder names)."""

SIDE_BY_SIDE_LAYOUTS = frozenset({"did"})
"""Layouts whose single file holds the rainy (left half) and clean (right half) image."""


def find_pairs(
    layout: str, src: str | os.PathLike[str], *, lq_dir: str = "input", gt_dir: str = "target"
) -> RelativePairs:
    """List the ``(lq, gt)`` pairs of ``src`` read as ``layout``, relative to ``src`` (or the list's folder).

    Args:
        layout: One of :data:`LAYOUTS`.
        src: Source folder (a pair-list file for ``list``).
        lq_dir: Rainy folder for the ``pairs`` layout. Default: ``input``.
        gt_dir: Clean folder for the ``pairs`` layout. Default: ``target``.

    Raises:
        LayoutError: For an unknown layout or a source that does not match it.
    """
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "pairs":
        return pairs_layout(src, lq_dir=lq_dir, gt_dir=gt_dir)
    return LAYOUTS[layout](src)


# Tried in this order by detect_layout; the first that reads the folder wins. rain100h also reads the
# RainTrainH form (rain-N.png beside norain-N.png), so the synthetic splits are found as rain100h.
DETECTION_ORDER = ("rain100h", "rain200h", "ddn", "raindrop", "rain13k", "did")


def detect_layout(src: str | os.PathLike[str]) -> str:
    """The first layout of :data:`DETECTION_ORDER` that reads ``src`` (a folder), for tools given a bare folder.

    Raises:
        LayoutError: No layout reads it; the message lists each layout tried and what it found.
    """
    root = Path(src)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder")
    found = []
    for layout in DETECTION_ORDER:
        try:
            if find_pairs(layout, root):
                return layout
        except LayoutError as error:
            found.append(f"{layout}: {error}")
    listing = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:8]
    raise LayoutError(
        f"{root}: no known layout reads it (it holds {', '.join(listing) or 'nothing'}); tried "
        + "; ".join(found)
        + ". Name one with --layout (pairs with --lq-dir/--gt-dir for other folder names)"
    )


def source_root(layout: str, src: str | os.PathLike[str]) -> Path:
    """Folder the relative paths of :func:`find_pairs` start from: ``src``, or its folder for ``list``."""
    return Path(src).parent if layout == "list" else Path(src)


def _existing_folder(src: str | os.PathLike[str], layout: str) -> Path:
    root = Path(src)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder; the {layout} layout expects a data set folder")
    return root


def _image_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, str]:
    """Image files under ``folder`` (:func:`scan_images`), as ``{path without extension: path}`` relative to it.

    Raises:
        LayoutError: If two files differ only by extension.
    """
    files: dict[str, str] = {}
    for path in scan_images(folder, extensions):
        previous = files.setdefault(strip_extension(path), path)
        if previous != path:
            raise LayoutError(f"{folder}: {previous} and {path} have the same name (keys would collide)")
    return files


def _named_images(folder: Path, patterns: dict[str, str], expected: str) -> dict[str, dict[str, str]]:
    """Sort the images directly in ``folder`` by role; each name (no extension) must match a pattern.

    Args:
        folder: Folder to list (not recursive).
        patterns: ``{role: regex}``; each regex has an ``id`` group and must match a whole name.
        expected: Description of the layout, for errors.

    Returns:
        ``{role: {id: file name}}``.

    Raises:
        LayoutError: For an image that fits no pattern, two images with one id and role, or no image.
    """
    found: dict[str, dict[str, str]] = {role: {} for role in patterns}
    for name in sorted(os.listdir(folder)):
        stem = os.path.splitext(name)[0]
        if not is_image_name(name) or not (folder / name).is_file():
            continue
        for role, pattern in patterns.items():
            match = re.fullmatch(pattern, stem)
            if match:
                previous = found[role].setdefault(match["id"], name)
                if previous != name:
                    raise LayoutError(f"{folder}: {previous} and {name} have the same name (keys would collide)")
                break
        else:
            raise LayoutError(f"{folder / name} does not fit the layout; expected {expected}")
    for role, files in found.items():
        if not files:
            raise LayoutError(f"{folder}: no {role} images; expected {expected}")
    return found


def _join(
    root: Path,
    lq: dict[str, str],
    gt: dict[str, str],
    lq_prefix: str,
    gt_prefix: str,
    gt_id: Callable[[str], str] | None = None,
) -> RelativePairs:
    """Pair ``lq`` ids with ``gt`` ids; every image must find a partner.

    Args:
        root: Source folder, for errors.
        lq: ``{id: path}`` of rainy images.
        gt: ``{id: path}`` of clean images.
        lq_prefix: Folder of the lq paths relative to ``root`` (``""`` or ending in ``/``).
        gt_prefix: Folder of the gt paths relative to ``root``.
        gt_id: Lq id -> id of its clean image. Default: the same id.

    Raises:
        LayoutError: Naming a rainy image without clean image, or a clean image no rainy image uses.
    """
    pairs: RelativePairs = []
    used: set[str] = set()
    for lq_id, lq_path in lq.items():
        target_id = lq_id if gt_id is None else gt_id(lq_id)
        if target_id not in gt:
            raise LayoutError(f"{root / (lq_prefix + lq_path)} has no clean counterpart in {root / gt_prefix}")
        used.add(target_id)
        pairs.append((lq_prefix + lq_path, gt_prefix + gt[target_id]))
    unused = sorted((gt[ident] for ident in set(gt) - used), key=natural_key)
    if unused:
        raise LayoutError(f"{root / (gt_prefix + unused[0])} has no rainy counterpart in {root / lq_prefix}")
    return sorted(pairs, key=lambda pair: natural_key(pair[0]))


def _repack_folders(root: Path) -> tuple[str, str] | None:
    """The on-disk names of ``input``/``target`` or ``Source``/``Target`` in ``root`` (any case), if present.

    Raises:
        LayoutError: If both an input and a source folder are present.
    """
    folders = {entry.name.lower(): entry.name for entry in root.iterdir() if entry.is_dir()}
    if "target" not in folders:
        return None
    candidates = [folders[name] for name in ("input", "source") if name in folders]
    if len(candidates) > 1:
        raise LayoutError(f"{root}: both {candidates[0]}/ and {candidates[1]}/ next to {folders['target']}/; ambiguous")
    return (candidates[0], folders["target"]) if candidates else None
