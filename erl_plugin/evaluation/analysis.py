"""How ERL-Net changes de-raining results compared with a baseline (paper, Section 4.3).

Given de-rained outputs of a baseline (the paper's MEMD) and of ERL-Net, and either folders of clean
targets and rainy inputs (or binary rain masks) matched by relative file name, or a test set in any
layout the datasets read (an output matches a pair by the pair's name, alone or with BasicSR's
``_<suffix>``, as ``derain.py`` and ``erl-test`` write them):

- **Improvement shares** (Fig. 3): the share of images whose ERL-Net PSNR is above the baseline's,
  over all images and within the *hard* (baseline PSNR below the baseline's mean) and *easy* (the
  rest) subsets.
- **RIM** (Eq. 6), on the protocol's Y channel: 1 where ``|ERL - clean| < |baseline - clean|``, else 0
  (ties count as not improved, as ``>=`` gives 0 in the paper).
- **BMR / BMB**: BMR is 1 where ``|rainy - clean|`` on Y is above its per-image mean (the paper's
  mean threshold), BMB its complement; or BMR is read from a mask image (nonzero = rain).
- **IoR / IoB** (Eq. 7): printed as a per-pixel sum of ``(BMR and RIM) / BMR``, which divides by zero
  outside the region and grows with the image size. The values of Table 4 (between 0 and 1) fit the
  ratio of sums instead, which is what is computed::

      IoR = sum(BMR and RIM) / sum(BMR),    IoB = sum(BMB and RIM) / sum(BMB)

  i.e. the fraction of rain (background) pixels that ERL-Net brings closer to the clean image.
- **mIoR / mIoB** (Eq. 8): means of IoR / IoB over images. An image whose region is empty (no rain
  pixel, or no background pixel) has no IoR (IoB); it is left out of that mean and counted.

PSNR, SSIM and Y follow a named protocol of :mod:`erl_plugin.metrics.protocols` (default ``paper``,
the authors' own); every written header, table and plot title names it.
"""

import collections
import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from erl_plugin.data.images import read_image
from erl_plugin.data.layouts import IMAGE_EXTENSIONS, scan_images
from erl_plugin.evaluation.evaluate import dataset_section, pair_name, read_pair, side_by_side, test_pairs
from erl_plugin.metrics.protocols import check_protocol, luma, psnr, ssim
from erl_plugin.utils.outputs import OutputFolder

DEFAULT_PROTOCOL = "paper"


@dataclass(frozen=True)
class ImageResult:
    """Scores and region ratios of one image.

    ``ior`` / ``iob`` are None where the image has no rain (background) pixel.
    """

    name: str
    baseline_psnr: float
    baseline_ssim: float
    erl_psnr: float
    erl_ssim: float
    ior: float | None
    iob: float | None

    @property
    def improved(self) -> bool:
        """ERL-Net's PSNR is above the baseline's."""
        return self.erl_psnr > self.baseline_psnr


@dataclass(frozen=True)
class Share:
    """How many images of a subset ERL-Net improves."""

    improved: int
    total: int

    @property
    def fraction(self) -> float:
        """``improved / total``; NaN for an empty subset."""
        return self.improved / self.total if self.total else math.nan


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyze`: per-image results and the dataset-level figures."""

    protocol: str
    images: tuple[ImageResult, ...]
    hard: tuple[bool, ...]  # per image: baseline PSNR below the baseline mean
    baseline_mean_psnr: float
    erl_mean_psnr: float
    baseline_mean_ssim: float
    erl_mean_ssim: float
    overall: Share
    hard_share: Share
    easy_share: Share
    miou_rain: float  # mIoR; NaN when no image has rain pixels
    miou_background: float  # mIoB; NaN when no image has background pixels
    rain_undefined: int  # images without rain pixels (left out of mIoR)
    background_undefined: int  # images without background pixels (left out of mIoB)


def list_images(folder: str) -> list[str]:
    """Relative paths (``/``-separated, sorted) of the image files under ``folder``, hidden ones skipped.

    Raises:
        ValueError: If ``folder`` is not a directory or holds no image file.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a directory")
    names = scan_images(folder)
    if not names:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return names


def matched_names(folders: Sequence[str]) -> list[str]:
    """The image names common to all ``folders``.

    Raises:
        ValueError: If a folder is empty or the folders do not hold the same names; the message names
            the files (up to 10) and the folders that lack them.
    """
    listed = {folder: set(list_images(folder)) for folder in folders}
    union = set().union(*listed.values())
    problems = []
    for folder, names in listed.items():
        missing = sorted(union - names)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            problems.append(f"{folder} lacks {shown}")
    if problems:
        raise ValueError("the folders do not hold the same image files: " + "; ".join(problems))
    return sorted(union)


def result_indicator_map(baseline_y: np.ndarray, erl_y: np.ndarray, clean_y: np.ndarray) -> np.ndarray:
    """RIM (Eq. 6): True where ERL-Net is strictly closer to the clean Y than the baseline."""
    return np.abs(erl_y - clean_y) < np.abs(baseline_y - clean_y)


def rain_map(rainy_y: np.ndarray, clean_y: np.ndarray) -> np.ndarray:
    """BMR: True where ``|rainy - clean|`` is above its mean over the image (no rain: all False)."""
    difference = np.abs(rainy_y - clean_y)
    return difference > difference.mean()


def intersection_ratio(region: np.ndarray, rim: np.ndarray) -> float | None:
    """``sum(region and rim) / sum(region)`` (Eq. 7 as a ratio of sums); None for an empty region."""
    size = int(np.count_nonzero(region))
    return int(np.count_nonzero(region & rim)) / size if size else None


Loaded = tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, str]]
"""One image's pictures per role (``baseline``, ``erl``, ``clean``, maybe ``rainy``), its rain mask
(None: threshold the rain map from the rainy image) and the path of each, for messages."""


def _rain_region(loaded: Loaded, protocol: str) -> np.ndarray:
    """BMR of one image, after checking that every picture (and the mask) has the clean image's size."""
    images, mask, paths = loaded
    height, width = images["clean"].shape[:2]
    for role, image in {**images, **({"mask": mask} if mask is not None else {})}.items():
        if image.shape[:2] != (height, width):
            raise ValueError(
                f"size mismatch: {paths[role]} is {image.shape[1]}x{image.shape[0]} but "
                f"{paths['clean']} is {width}x{height}"
            )
    if mask is not None:
        return mask != 0
    return rain_map(luma(images["rainy"], protocol), luma(images["clean"], protocol))


def _read(paths: Mapping[str, str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The colour image of every role but ``mask``, and the mask (grey) when there is one."""
    images = {role: read_image(path, cv2.IMREAD_COLOR) for role, path in paths.items() if role != "mask"}
    return images, read_image(paths["mask"], cv2.IMREAD_GRAYSCALE) if "mask" in paths else None


def _folder_source(folders: dict[str, str]) -> tuple[list[str], Callable[[str], Loaded]]:
    """The names common to every folder (``mask`` among them when given) and a loader by relative name."""
    names = matched_names(list(folders.values()))

    def load(name: str) -> Loaded:
        paths = {role: os.path.join(folder, name) for role, folder in folders.items()}
        return (*_read(paths), paths)

    return names, load


def _aliases(name: str) -> list[str]:
    """A pair's name, then (for an LMDB key ``sub__folders__file``) its file name alone."""
    return [name, name.rsplit("__", 1)[1]] if "__" in name else [name]


def matched_outputs(folder: str, names: Sequence[str]) -> dict[str, str]:
    """For each pair name, the one image under ``folder`` named after it: ``<name>.<ext>`` or BasicSR's
    test output ``<name>_<suffix>.<ext>``, where ``name`` may also be an LMDB key's last part
    (``rain-001`` for the key ``rainy__rain-001``).

    Raises:
        ValueError: A pair without an output or with several, an image claimed by several pairs, or one
            that matches no pair; the message names the folder and the images (up to 10 of each kind).
    """
    files = list_images(folder)
    by_stem = {os.path.splitext(file)[0]: file for file in files}
    found: dict[str, str] = {}
    missing, ambiguous = [], []
    for name in names:
        for alias in _aliases(name):
            candidates = (
                [by_stem[alias]] if alias in by_stem else [f for s, f in by_stem.items() if s.startswith(f"{alias}_")]
            )
            if candidates:
                break
        if len(candidates) == 1:
            found[name] = candidates[0]
        else:
            (ambiguous if candidates else missing).append(name)
    claims = collections.Counter(found.values())
    shared = sorted(file for file, count in claims.items() if count > 1)
    unmatched = sorted(set(files) - set(found.values()))
    problems = [
        f"{label} {', '.join(items[:10])}{f' and {len(items) - 10} more' if len(items) > 10 else ''}"
        for label, items in (
            ("no output for", missing),
            ("several outputs for", ambiguous),
            ("images matching several pairs:", shared),
            ("images matching no pair:", unmatched),
        )
        if items
    ]
    if problems:
        raise ValueError(f"{folder}: {'; '.join(problems)} (an output is named <pair>.png or <pair>_<suffix>.png)")
    return found


def _dataset_source(
    folders: dict[str, str], data: str, layout: str | None
) -> tuple[list[str], Callable[[str], Loaded]]:
    """The pair names of a test set (any layout, or an LMDB pair folder) and a loader that reads a pair
    with the outputs (and mask) named after it."""
    dataset = test_pairs(dataset_section(data, layout))
    position = {pair_name(lq_path): index for index, (lq_path, _) in enumerate(dataset.pairs)}
    names = sorted(position)
    outputs = {role: matched_outputs(folder, names) for role, folder in folders.items()}

    def load(name: str) -> Loaded:
        lq_path, gt_path = dataset.pairs[position[name]]
        paths = {role: os.path.join(folders[role], outputs[role][name]) for role in folders}
        images, mask = _read(paths)
        _, images["rainy"], images["clean"] = read_pair(dataset, position[name])
        return images, mask, {**paths, "rainy": str(lq_path), "clean": str(gt_path)}

    return names, load


def _maps(images: dict[str, np.ndarray], protocol: str) -> np.ndarray:
    baseline_y, erl_y, clean_y = (luma(images[role], protocol) for role in ("baseline", "erl", "clean"))
    return result_indicator_map(baseline_y, erl_y, clean_y)


def summarize(protocol: str, images: Sequence[ImageResult]) -> Analysis:
    """Shares, means, mIoR and mIoB over per-image results (hard: baseline PSNR below its mean)."""
    if not images:
        raise ValueError("no images to summarize")
    baseline_mean = float(np.mean([image.baseline_psnr for image in images]))
    hard = tuple(image.baseline_psnr < baseline_mean for image in images)
    rain = [image.ior for image in images if image.ior is not None]
    background = [image.iob for image in images if image.iob is not None]

    def share(selected: Sequence[ImageResult]) -> Share:
        return Share(sum(image.improved for image in selected), len(selected))

    return Analysis(
        protocol=protocol,
        images=tuple(images),
        hard=hard,
        baseline_mean_psnr=baseline_mean,
        erl_mean_psnr=float(np.mean([image.erl_psnr for image in images])),
        baseline_mean_ssim=float(np.mean([image.baseline_ssim for image in images])),
        erl_mean_ssim=float(np.mean([image.erl_ssim for image in images])),
        overall=share(images),
        hard_share=share([image for image, is_hard in zip(images, hard, strict=True) if is_hard]),
        easy_share=share([image for image, is_hard in zip(images, hard, strict=True) if not is_hard]),
        miou_rain=float(np.mean(rain)) if rain else math.nan,
        miou_background=float(np.mean(background)) if background else math.nan,
        rain_undefined=len(images) - len(rain),
        background_undefined=len(images) - len(background),
    )


def _percent(share: Share) -> str:
    return "n/a" if share.total == 0 else f"{100 * share.fraction:.1f}%"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def format_summary(analysis: Analysis) -> str:
    """The Markdown summary: improvement shares, mean scores and mIoR/mIoB, naming the protocol."""
    p = analysis.protocol
    count = len(analysis.images)
    rows = [
        ("overall", analysis.overall),
        (f"hard (baseline PSNR < its mean {analysis.baseline_mean_psnr:.2f} dB)", analysis.hard_share),
        ("easy (the rest)", analysis.easy_share),
    ]
    lines = [
        f"# ERL-Net vs baseline, protocol {p} ({count} images)",
        "",
        f"Images where ERL-Net's PSNR ({p}) is above the baseline's (Fig. 3):",
        "",
        "| subset | images | improved | share improved |",
        "| --- | --- | --- | --- |",
        *(f"| {label} | {share.total} | {share.improved} | {_percent(share)} |" for label, share in rows),
        "",
        f"| model | mean PSNR (dB, {p}) | mean SSIM ({p}) |",
        "| --- | --- | --- |",
        f"| baseline | {analysis.baseline_mean_psnr:.2f} | {analysis.baseline_mean_ssim:.4f} |",
        f"| ERL-Net | {analysis.erl_mean_psnr:.2f} | {analysis.erl_mean_ssim:.4f} |",
        "",
        f"| metric (Y channel, {p}) | value | images used |",
        "| --- | --- | --- |",
        f"| mIoR | {_ratio(analysis.miou_rain)} | {count - analysis.rain_undefined} of {count} "
        f"({analysis.rain_undefined} without rain pixels left out) |",
        f"| mIoB | {_ratio(analysis.miou_background)} | {count - analysis.background_undefined} of {count} "
        f"({analysis.background_undefined} without background pixels left out) |",
        "",
        "IoR = sum(BMR and RIM) / sum(BMR), IoB = sum(BMB and RIM) / sum(BMB) per image (Eq. 7 read as a",
        "ratio of sums); mIoR / mIoB are their means over images (Eq. 8).",
    ]
    return "\n".join(lines)


def per_image_csv(analysis: Analysis) -> str:
    """CSV text, one row per image: scores of both models, improved (1/0), subset, IoR and IoB (empty if
    undefined)."""
    p = analysis.protocol
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(
        [
            "image",
            f"baseline PSNR ({p})",
            f"baseline SSIM ({p})",
            f"ERL-Net PSNR ({p})",
            f"ERL-Net SSIM ({p})",
            "improved",
            "subset",
            f"IoR (Y, {p})",
            f"IoB (Y, {p})",
        ]
    )
    for image, is_hard in zip(analysis.images, analysis.hard, strict=True):
        writer.writerow(
            [
                image.name,
                f"{image.baseline_psnr:.4f}",
                f"{image.baseline_ssim:.4f}",
                f"{image.erl_psnr:.4f}",
                f"{image.erl_ssim:.4f}",
                int(image.improved),
                "hard" if is_hard else "easy",
                "" if image.ior is None else f"{image.ior:.6f}",
                "" if image.iob is None else f"{image.iob:.6f}",
            ]
        )
    return text.getvalue()


def improvement_png(analysis: Analysis) -> bytes:
    """PNG of a bar plot like Fig. 3: share of improved images overall, among hard and among easy images."""
    shares = [analysis.overall, analysis.hard_share, analysis.easy_share]
    figure = Figure(figsize=(5.5, 4.0), dpi=100)
    axes = figure.subplots()
    heights = [0.0 if share.total == 0 else 100 * share.fraction for share in shares]
    bars = axes.bar(["overall", "hard", "easy"], heights, color=["tab:blue", "tab:red", "tab:green"])
    for bar, share in zip(bars, shares, strict=True):
        label = "n/a" if share.total == 0 else f"{100 * share.fraction:.1f}% ({share.improved}/{share.total})"
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    axes.axhline(50, color="grey", linestyle="--", linewidth=1)
    axes.set_ylim(0, 110)
    axes.set_ylabel("images improved by ERL-Net (%)")
    axes.set_title(f"ERL-Net PSNR above baseline, protocol {analysis.protocol}")
    image = io.BytesIO()
    figure.savefig(image, format="png")
    return image.getvalue()


def overlay(
    images: dict[str, np.ndarray], rim: np.ndarray, rain: np.ndarray, result: ImageResult, protocol: str
) -> np.ndarray:
    """One labelled tile row: [rainy |] baseline | ERL-Net | clean | RIM (green) | rain map (red)."""
    gray = cv2.cvtColor(images["clean"], cv2.COLOR_BGR2GRAY) // 2
    dimmed = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    rim_view, rain_view = dimmed.copy(), dimmed.copy()
    rim_view[rim] = (0, 255, 0)
    rain_view[rain] = (0, 0, 255)
    tiles = [images["baseline"], images["erl"], images["clean"], rim_view, rain_view]
    labels = [
        f"baseline {result.baseline_psnr:.2f} dB ({protocol})",
        f"ERL-Net {result.erl_psnr:.2f} dB ({protocol})",
        "clean",
        "RIM: green = improved",
        "rain map (red)",
    ]
    if "rainy" in images:
        tiles.insert(0, images["rainy"])
        labels.insert(0, "rainy")
    return side_by_side([tiles], labels)


def _output_name(name: str) -> str:
    return os.path.splitext(name)[0] + ".png"


def analyze(
    baseline_dir: str,
    erl_dir: str,
    clean_dir: str | None = None,
    rainy_dir: str | None = None,
    *,
    out_dir: str,
    data: str | None = None,
    layout: str | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    masks_dir: str | None = None,
    hardest: int = 4,
    progress: bool = True,
    overwrite: bool = False,
) -> Analysis:
    """Compare ERL-Net with a baseline image by image and write the Section 4.3 analysis.

    Args:
        baseline_dir: De-rained outputs of the baseline (MEMD).
        erl_dir: De-rained outputs of ERL-Net.
        clean_dir: Clean targets, matched by relative file name. Give this or ``data``.
        rainy_dir: Rainy inputs beside ``clean_dir``; the rain map is thresholded from them. Required
            with ``clean_dir`` unless ``masks_dir``.
        out_dir: Receives ``per_image.csv``, ``summary.md``, ``improvement.png`` and
            ``hardest/<name>.png`` (the ``hardest`` images of lowest baseline PSNR).
        data: A test set in any layout the datasets read (or a folder holding ``lq.lmdb`` and
            ``gt.lmdb``): its pairs give the clean and rainy images, and the outputs (and masks) are
            matched by the pair's name (:func:`matched_outputs`). Give this or ``clean_dir``.
        layout: The layout of ``data``. Default: detected.
        protocol: PSNR/SSIM/Y protocol (``basicsr``, ``paper`` or ``matlab``). Default: ``paper``.
        masks_dir: Binary rain masks (nonzero = rain) used instead of thresholding. Default: None.
        hardest: How many overlays to write. Default: 4.
        progress: Show a progress bar over images. Default: True.
        overwrite: Replace the files an earlier run wrote in ``out_dir`` (:class:`OutputFolder`).

    Returns:
        The analysis.

    Raises:
        ValueError: For an unknown protocol, both or neither of ``clean_dir`` and ``data``, no rainy
            folder and no masks, a missing or empty folder, folders holding different file names (or
            outputs that do not match the pairs), or images of different sizes.
        LayoutError: No layout reads ``data`` (the message lists those tried).
    """
    check_protocol(protocol)
    if (clean_dir is None) == (data is None):
        raise ValueError("give the clean targets either as CLEAN_DIR or as a test set with --data, not both")
    if data is not None and rainy_dir is not None:
        raise ValueError("--data gives the rainy inputs too: drop RAINY_DIR")
    if data is None and rainy_dir is None and masks_dir is None:
        raise ValueError("no rainy folder and no masks folder: the rain map needs one of them")
    if hardest < 0:
        raise ValueError(f"hardest must be 0 or more, got {hardest}")
    outputs = {"baseline": baseline_dir, "erl": erl_dir, **({"mask": masks_dir} if masks_dir is not None else {})}
    if data is not None:
        inputs = [*outputs.values(), data]
        names, load = _dataset_source(outputs, data, layout)
    else:
        folders = {**outputs, "clean": clean_dir, **({"rainy": rainy_dir} if rainy_dir is not None else {})}
        inputs = list(folders.values())
        names, load = _folder_source(folders)
    with OutputFolder(out_dir, tool="analyze", overwrite=overwrite, inputs=inputs) as out:
        out.claim(["per_image.csv", "summary.md", "improvement.png"])
        return _analyze(names, load, protocol, hardest, progress, out)


def _analyze(
    names: Sequence[str],
    load: Callable[[str], Loaded],
    protocol: str,
    hardest: int,
    progress: bool,
    out: OutputFolder,
) -> Analysis:
    results = []
    for name in tqdm(names, desc=f"analyze ({protocol})", unit="image", disable=not progress):
        loaded = load(name)
        images, rain = loaded[0], _rain_region(loaded, protocol)
        rim = _maps(images, protocol)
        results.append(
            ImageResult(
                name=name,
                baseline_psnr=psnr(images["baseline"], images["clean"], protocol),
                baseline_ssim=ssim(images["baseline"], images["clean"], protocol),
                erl_psnr=psnr(images["erl"], images["clean"], protocol),
                erl_ssim=ssim(images["erl"], images["clean"], protocol),
                ior=intersection_ratio(rain, rim),
                iob=intersection_ratio(~rain, rim),
            )
        )
    analysis = summarize(protocol, results)
    hardest_results = sorted(results, key=lambda item: item.baseline_psnr)[:hardest]
    out.claim(f"hardest/{_output_name(result.name)}" for result in hardest_results)
    out.write_text("per_image.csv", per_image_csv(analysis))
    out.write_text("summary.md", format_summary(analysis) + "\n")
    out.write("improvement.png", improvement_png(analysis))
    for result in hardest_results:
        loaded = load(result.name)
        picture = overlay(loaded[0], _maps(loaded[0], protocol), _rain_region(loaded, protocol), result, protocol)
        out.write_image(f"hardest/{_output_name(result.name)}", picture)
    return analysis
