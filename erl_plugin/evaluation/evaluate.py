"""Derain a paired test folder with a trained network, score it and show it; or rainy photos without clean images.

Paired scores use the ``basicsr`` protocol: BasicSR's ``calculate_psnr`` / ``calculate_ssim`` on the Y
channel (MATLAB-style YCbCr, 11x11 Gaussian SSIM), no border crop. Photos without a clean image are
scored with NIQE, no-reference (:data:`~erl_plugin.metrics.no_reference.NIQE_PROTOCOL`), in tables of
their own. Every printed or written number names its protocol.
"""

import csv
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils import tensor2img
from torch import nn

from erl_plugin.archs.erl_arch import build_backbone
from erl_plugin.data.dataset_check import check_identity
from erl_plugin.data.derain_dataset import DerainPairedDataset
from erl_plugin.data.images import read_image, read_image_size
from erl_plugin.data.layouts import detect_layout
from erl_plugin.engine.options import OptionsError, import_custom_modules, load_options
from erl_plugin.evaluation.inference import NIQE_FILES, bgr8, collect_images, derain_tiled
from erl_plugin.metrics.no_reference import NiqeError, NiqeScores, check_niqe_size
from erl_plugin.metrics.protocols import psnr, ssim
from erl_plugin.models.headroom import Headroom, measure_headroom
from erl_plugin.models.validation import first_validation_phase
from erl_plugin.utils.checkpoint import load_fitting, load_weights
from erl_plugin.utils.outputs import OutputFolder

PROTOCOL = "basicsr"
PROTOCOL_DESCRIPTION = "BasicSR Y-channel PSNR/SSIM, crop_border=0"


@dataclass(frozen=True)
class Score:
    """PSNR (dB) and SSIM of one image against its clean target, ``basicsr`` protocol."""

    psnr: float
    ssim: float


TEACHER_FILE = re.compile(r"net_t_[^/]*\.pth$")
"""ERLModel's teacher checkpoints (``net_t_teacher.pth``, ``net_t_<iter>.pth``): clean-to-clean networks."""


@dataclass(frozen=True)
class LoadedNetwork:
    """A network ready to derain, and which network of the options it is (said wherever it is scored)."""

    net: nn.Module
    scored: str


def load_network(opt_path: str, checkpoint: str, param_key: str = "params") -> LoadedNetwork:
    """Build ``network_g`` from an options file and load a BasicSR checkpoint into it (eval mode).

    A plain backbone checkpoint (such as ``memd_stage1.pth``, the end of ERL-Net's stage I) given
    with ERLNet options builds the backbone alone, so it is evaluated as the baseline it is, and
    :attr:`LoadedNetwork.scored` says so. The modules ``custom_imports`` lists are imported first.

    Raises:
        OptionsError: No ``network_g`` in the options.
        ValueError: The checkpoint does not fit, or it is ERL-Net's teacher (``net_t_*.pth``), which
            never learnt to derain.
    """
    opt = load_options(opt_path)
    import_custom_modules(opt, opt_path)
    if "network_g" not in opt:
        raise OptionsError(f"{opt_path}: no network_g section")
    params = load_weights(checkpoint, param_key)
    network_opt = dict(opt["network_g"])
    scored = f"{network_opt['type']} (network_g of {os.path.basename(opt_path)})"
    if network_opt["type"] == "ERLNet" and not any(key.startswith("backbone.") for key in params):
        # The backbone as ERL-Net sees it (adapted networks declare their grid, feature_info); a pretrained
        # restorer's options may leave its type to the checkpoint.
        net = build_backbone(network_opt["backbone"], network_opt.get("entangle_at"))
        backbone = network_opt["backbone"].get("type") or type(getattr(net, "network", net)).__name__
        if TEACHER_FILE.search(os.path.basename(checkpoint)):
            raise ValueError(
                f"{checkpoint} is ERL-Net's teacher, a {backbone} trained clean to clean: it never learnt to "
                f"derain; score net_g_*.pth (ERL-Net) or {backbone.lower()}_stage1.pth (the {backbone} baseline)"
            )
        scored = f"{backbone} alone (a backbone checkpoint under ERLNet options), not ERL-Net"
    else:
        net = build_network(network_opt)
    try:
        load_fitting(net, params)
    except ValueError as error:
        raise ValueError(f"{checkpoint} does not fit network_g of {opt_path}: {error}") from None
    return LoadedNetwork(net.eval(), scored)


def checkpoint_from_options(opt_path: str, checkpoint: str | None) -> tuple[str, str]:
    """``(checkpoint, param_key)``: the one given, else the options' ``path.pretrain_network_g`` and
    ``path.param_key_g`` (default ``params``), as BasicSR's test.py reads them.

    Raises:
        OptionsError: Neither is set; the message says which to set.
    """
    path = load_options(opt_path).get("path") or {}
    param_key = path.get("param_key_g") or "params"
    if checkpoint is not None:
        return checkpoint, param_key
    if not path.get("pretrain_network_g"):
        raise OptionsError(
            f"{opt_path}: no checkpoint: give --checkpoint FILE, or set path.pretrain_network_g in the options"
        )
    return str(path["pretrain_network_g"]), param_key


def dataset_section(folder: str, layout: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The DerainPairedDataset section that reads ``folder``: a folder holding ``lq.lmdb`` and ``gt.lmdb``
    (what ``create_lmdb.py`` writes), else ``layout`` or the layout :func:`detect_layout` finds.

    Raises:
        LayoutError: No layout reads the folder (the message lists those tried and what it holds).
    """
    name = name or os.path.basename(os.path.normpath(folder))
    lq, gt = os.path.join(folder, "lq.lmdb"), os.path.join(folder, "gt.lmdb")
    if layout is None and os.path.isdir(lq) and os.path.isdir(gt):
        return {"name": name, "dataroot_lq": lq, "dataroot_gt": gt, "io_backend": {"type": "lmdb"}}
    return {"name": name, "layout": layout or detect_layout(folder), "dataroot": folder}


def test_pairs(section: Mapping[str, Any]) -> DerainPairedDataset:
    """The test-phase DerainPairedDataset of a dataset section (any layout, folders or LMDBs).

    Raises:
        DatasetCheckError: The rainy images are the clean ones (:func:`check_identity`): every
            score would be that of the identity.
    """
    dataset = DerainPairedDataset({"phase": "test", **section})
    check_identity(section, dataset.pairs)
    return dataset


def pair_name(lq_path: str) -> str:
    """A pair's name: its rainy file's name without the extension (what BasicSR's test names outputs by)."""
    return os.path.splitext(os.path.basename(str(lq_path)))[0]


def read_pair(dataset: DerainPairedDataset, index: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, rainy, clean)`` of one pair of a test dataset, as BGR uint8 images."""
    item = dataset[index]
    return pair_name(item["lq_path"]), tensor2img(item["lq"]), tensor2img(item["gt"])


def read_pairs(dataset: DerainPairedDataset) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, rainy, clean)`` BGR uint8 images of a test dataset, one pair at a time."""
    for index in range(len(dataset)):
        yield read_pair(dataset, index)


def derain(net: nn.Module, image: np.ndarray) -> np.ndarray:
    """Derain one BGR uint8 image of any size, whole; returns a BGR uint8 image of the same size."""
    return derain_tiled(net, image, tile=None)


def score(image: np.ndarray, clean: np.ndarray) -> Score:
    """Score a BGR uint8 image against its clean target with the ``basicsr`` protocol."""
    return Score(psnr=psnr(image, clean, PROTOCOL), ssim=ssim(image, clean, PROTOCOL))


def mean_score(scores: Sequence[Score]) -> Score:
    """Average PSNR and SSIM over images."""
    return Score(float(np.mean([s.psnr for s in scores])), float(np.mean([s.ssim for s in scores])))


def side_by_side(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str], width: int = 256) -> np.ndarray:
    """Tile images into one BGR picture: one row per image, one labelled column per version.

    Each image is resized to ``width`` pixels wide (keeping its aspect ratio).
    """
    tiles = []
    for images in rows:
        height = max(round(image.shape[0] * width / image.shape[1]) for image in images)
        tiles.append(np.hstack([cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA) for image in images]))
    header = np.full((28, width * len(labels), 3), 255, np.uint8)
    for column, label in enumerate(labels):
        cv2.putText(header, label, (column * width + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([header, *tiles])


def scores_csv(names: Sequence[str], columns: dict[str, Sequence[Score]]) -> str:
    """Per-image scores as CSV text, one column pair per version, with the protocol in every header."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    header = ["image"]
    for version in columns:
        header += [f"{version} PSNR ({PROTOCOL})", f"{version} SSIM ({PROTOCOL})"]
    writer.writerow(header)
    for index, name in enumerate(names):
        row: list[str | float] = [name]
        for scores in columns.values():
            row += [f"{scores[index].psnr:.4f}", f"{scores[index].ssim:.4f}"]
        writer.writerow(row)
    return text.getvalue()


def format_table(title: str, means: dict[str, Score], scored: Mapping[str, str] | None = None) -> str:
    """A Markdown table of mean PSNR/SSIM per version, headed by the protocol; ``scored`` names the
    network each version's checkpoint loaded into (:attr:`LoadedNetwork.scored`)."""
    scored = scored or {}
    lines = [
        f"{title}, protocol {PROTOCOL} ({PROTOCOL_DESCRIPTION})",
        "",
        f"| version | PSNR (dB, {PROTOCOL}) | SSIM ({PROTOCOL}) | network scored |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {version} | {s.psnr:.2f} | {s.ssim:.4f} | {scored.get(version, 'the input itself')} |"
        for version, s in means.items()
    ]
    return "\n".join(lines)


RESERVED_LABELS = ("rainy", "rainy input", "clean")
"""Names the tables give the input and the target, which no model may take."""


def check_labels(models: Sequence[tuple[str, str, str]]) -> None:
    """Refuse model labels that repeat or take a name of :data:`RESERVED_LABELS` (a row would hide another).

    Raises:
        ValueError: Naming the label.
    """
    seen: set[str] = set()
    for label, _, _ in models:
        if label in RESERVED_LABELS:
            raise ValueError(f"model label {label!r} names the input or target; choose another (not {RESERVED_LABELS})")
        if label in seen:
            raise ValueError(f"model label {label!r} is given twice; each model needs a label of its own")
        seen.add(label)


def evaluate(
    models: Sequence[tuple[str, str, str]],
    data_dir: str,
    out_dir: str,
    show: int = 4,
    layout: str | None = None,
    overwrite: bool = False,
) -> dict[str, Score]:
    """Derain every pair of a test folder with each model and compare with the input.

    Args:
        models: ``(label, options file, checkpoint)`` per model.
        data_dir: A test folder in any layout DerainPairedDataset reads (detected unless ``layout``), or a
            folder with ``lq.lmdb`` and ``gt.lmdb``.
        out_dir: Receives ``scores.csv`` (per image), ``summary.md`` (the table) and
            ``comparison.png`` (rainy | each model | clean, for ``show`` images spread over the set).
        layout: One of :data:`erl_plugin.data.layouts.LAYOUTS`; default: detected.
        overwrite: Replace those three files when an earlier run wrote them (:class:`OutputFolder`).

    Returns:
        Mean scores for ``"rainy input"`` and each label.
    """
    check_labels(models)
    inputs = [data_dir, *(path for _, opt, checkpoint in models for path in (opt, checkpoint))]
    with OutputFolder(out_dir, tool="evaluate", overwrite=overwrite, inputs=inputs) as out:
        out.claim(EVALUATION_FILES)
        return _evaluate(models, data_dir, out, show, layout)


EVALUATION_FILES = ("scores.csv", "summary.md", "comparison.png")


def _evaluate(
    models: Sequence[tuple[str, str, str]], data_dir: str, out: OutputFolder, show: int, layout: str | None
) -> dict[str, Score]:
    loaded = {label: load_network(opt_path, checkpoint) for label, opt_path, checkpoint in models}
    nets = {label: network.net for label, network in loaded.items()}
    section = dataset_section(data_dir, layout)
    dataset = test_pairs(section)
    count = len(dataset)
    shown = set(np.linspace(0, count - 1, min(show, count)).round().astype(int).tolist())
    scores: dict[str, list[Score]] = {"rainy": [], **{label: [] for label in nets}}
    names, rows = [], []
    for index, (name, rainy, clean) in enumerate(read_pairs(dataset)):
        outputs = {label: derain(net, rainy) for label, net in nets.items()}
        names.append(name)
        scores["rainy"].append(score(rainy, clean))
        for label, output in outputs.items():
            scores[label].append(score(output, clean))
        if index in shown:
            rows.append((rainy, *outputs.values(), clean))
    out.write_text("scores.csv", scores_csv(names, scores))
    out.write_image("comparison.png", side_by_side(rows, ["rainy", *nets, "clean"]))
    means = {"rainy input": mean_score(scores["rainy"]), **{label: mean_score(scores[label]) for label in nets}}
    title = f"{data_dir} ({count} pairs, layout {section.get('layout', 'lmdb')})"
    scored = {label: network.scored for label, network in loaded.items()}
    out.write_text("summary.md", format_table(title, means, scored) + "\n")
    return means


NO_REFERENCE_FILES = (*NIQE_FILES, "comparison.png")


def evaluate_no_reference(
    models: Sequence[tuple[str, str, str]],
    photos: Sequence[str],
    out_dir: str,
    show: int = 4,
    overwrite: bool = False,
) -> NiqeScores:
    """Derain rainy photos that have no clean image with each model; score the input and every output with
    NIQE, no-reference (:data:`~erl_plugin.metrics.no_reference.NIQE_PROTOCOL`; lower is better).

    Photos are read upright (:func:`~erl_plugin.data.images.read_image`), derained whole and scored on their
    8-bit BGR view (:func:`~erl_plugin.evaluation.inference.bgr8`). A photo smaller than NIQE's minimum is
    listed as not scored (and not derained); so is one an output of which NIQE cannot score.

    Args:
        models: ``(label, options file, checkpoint)`` per model.
        photos: Image files and folders (folders read as erl-derain reads them, not recursively).
        out_dir: Receives ``niqe.csv`` (per image), ``niqe.md`` (the table) and ``comparison.png``
            (rainy | each model, for ``show`` photos spread over the scored ones).
        overwrite: Replace those files when an earlier run wrote them (:class:`OutputFolder`).

    Returns:
        The scores: versions ``"rainy input"`` and each label.

    Raises:
        NiqeError: No photo is as large as NIQE's minimum (before any network runs), naming each.
        ImageFileError: A photo cannot be read.
        ValueError: A model label repeats or is reserved (:func:`check_labels`).
    """
    check_labels(models)
    inputs = [*photos, *(path for _, opt, checkpoint in models for path in (opt, checkpoint))]
    with OutputFolder(out_dir, tool="evaluate", overwrite=overwrite, inputs=inputs) as out:
        out.claim(NO_REFERENCE_FILES)
        return _evaluate_no_reference(models, photos, out, show)


def _evaluate_no_reference(
    models: Sequence[tuple[str, str, str]], photos: Sequence[str], out: OutputFolder, show: int
) -> NiqeScores:
    files = collect_images(photos)
    too_small: dict[str, str] = {}
    for file in files:
        try:
            check_niqe_size(*read_image_size(file), str(file))
        except NiqeError as error:
            too_small[str(file)] = str(error)
    if len(too_small) == len(files):
        raise NiqeError("no photo can be scored: " + "; ".join(too_small.values()))
    loaded = {label: load_network(opt_path, checkpoint) for label, opt_path, checkpoint in models}
    scores = NiqeScores(["rainy input", *loaded])
    count = len(files) - len(too_small)
    shown = set(np.linspace(0, count - 1, min(show, count)).round().astype(int).tolist())
    rows = []
    for file in files:
        name = str(file)
        if name in too_small:
            scores.skip(name, too_small[name])
            continue
        rainy = read_image(file)
        outputs = [bgr8(derain(network.net, rainy)) for network in loaded.values()]
        if scores.add(name, [bgr8(rainy), *outputs]) and len(scores.names) - 1 in shown:
            rows.append((bgr8(rainy), *outputs))
    out.write_text("niqe.csv", scores.csv())
    out.write_image("comparison.png", side_by_side(rows, ["rainy", *loaded]))
    title = f"{', '.join(photos)} ({len(files)} photos without clean images)"
    scored = {label: network.scored for label, network in loaded.items()}
    out.write_text("niqe.md", scores.markdown(title, scored) + "\n")
    return scores


def checkpoint_headroom(opt_path: str, network_g: str, teacher: str, data: str | None = None) -> Headroom:
    """The entanglement headroom (:mod:`erl_plugin.models.headroom`) of checkpoints on disk, with the
    gradient balance of the options' ``pixel_opt`` and ``feature_opt`` where both are given.

    Args:
        opt_path: ERL-Net options (``network_g: {type: ERLNet}``; ``train.teacher_mode`` says through which
            decoder the teacher was trained).
        network_g: An ERLNet checkpoint or a plain backbone one (the residual encoder then follows ``ren_init``).
        teacher: The teacher's checkpoint (``net_t_*.pth``).
        data: A test folder in any layout (or lq.lmdb + gt.lmdb); default: the options' first validation set.

    Raises:
        OptionsError: The options build no ERLNet, or name no validation set and ``data`` is None.
        ValueError: A checkpoint does not fit.
    """
    opt = load_options(opt_path)
    import_custom_modules(opt, opt_path)
    if (opt.get("network_g") or {}).get("type") != "ERLNet":
        raise OptionsError(f"{opt_path}: network_g.type must be ERLNet (the headroom needs a teacher's target)")
    net = build_network(dict(opt["network_g"]))
    teacher_net = net.new_backbone()
    for target, path in ((net, network_g), (teacher_net, teacher)):
        try:
            load_fitting(target, load_weights(path, "params"))
        except ValueError as error:
            raise ValueError(f"{path} does not fit network_g of {opt_path}: {error}") from None
    if data is not None:
        section = dataset_section(data)
    else:
        phase = first_validation_phase(opt)
        if phase is None:
            raise OptionsError(f"{opt_path}: no datasets.val section; give the data to measure on")
        section = {key: value for key, value in opt["datasets"][phase].items() if key != "phase"}
    dataset = test_pairs(section)
    pairs = ((item["lq"][None], item["gt"][None]) for item in (dataset[i] for i in range(len(dataset))))
    train = opt.get("train") or {}
    aligned = train.get("teacher_mode", "independent") == "aligned"
    losses = None
    if train.get("pixel_opt") and train.get("feature_opt"):
        losses = (build_loss(dict(train["pixel_opt"])), build_loss(dict(train["feature_opt"])))
    return measure_headroom(net, teacher_net, pairs, aligned, section["name"], losses)
