"""A leaderboard: every checkpoint on every test set, scored under several named protocols.

Each model (options file + checkpoint) derains every pair of each test folder (any layout the
datasets read, detected when not given, or an LMDB pair folder; read by
:class:`~erl_plugin.data.DerainPairedDataset`, so DID's side-by-side images are split as in
training) at full size with :func:`erl_plugin.evaluation.evaluate.derain`. A row holds the mean
PSNR/SSIM per protocol (:mod:`erl_plugin.metrics.protocols`), the parameters and FLOPs (MACs) at
1x3x320x320 (the paper's crop size, whatever the test images' sizes), and the median milliseconds
of one network forward pass per image after one warm-up pass, on a named device.

Published numbers (``docs/reported.yml``) can be added as rows of their own, ``source`` =
``reported (<citation>)`` and protocol ``reported``: they are never put in a measured column.

Example:
    >>> models = read_models("models.yml")
    >>> test_sets = read_test_sets("testsets.yml")
    >>> rows = run_leaderboard(models, test_sets, ("basicsr", "paper"))
    >>> with OutputFolder("results/leaderboard", tool="leaderboard") as out:
    ...     write_leaderboard(out, rows, ("basicsr", "paper"), matrix=True)
"""

import csv
import io
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from basicsr.utils import tensor2img
from torch import Tensor, nn
from tqdm import tqdm

from erl_plugin.archs.complexity import complexity
from erl_plugin.data import DerainPairedDataset
from erl_plugin.engine.options import load_yaml
from erl_plugin.evaluation.evaluate import dataset_section, derain, load_network, test_pairs
from erl_plugin.metrics.protocols import check_protocol, psnr, ssim
from erl_plugin.utils.outputs import OutputFolder
from erl_plugin.utils.speed import device_name

COMPLEXITY_SHAPE = (1, 3, 320, 320)
MEASURED = "measured"
REPORTED = "reported"
_MODEL_KEYS = {"name": True, "options": True, "checkpoint": True, "trained_on": False}
_TEST_SET_KEYS = {"name": True, "layout": False, "dataroot": True, "lq_dir": False, "gt_dir": False}


@dataclass(frozen=True)
class ModelSpec:
    """One entry of MODELS.yml: a checkpoint and the options file whose ``network_g`` builds it."""

    name: str
    options: str
    checkpoint: str
    trained_on: str | None = None


@dataclass(frozen=True)
class TestSetSpec:
    """One entry of TESTSETS.yml: a test folder in any layout (None: detected; ``lq_dir``/``gt_dir`` for
    ``pairs``), or a folder holding ``lq.lmdb`` and ``gt.lmdb``."""

    name: str
    dataroot: str
    layout: str | None = None
    lq_dir: str | None = None
    gt_dir: str | None = None


@dataclass(frozen=True)
class Row:
    """One model on one test set: measured (scores per protocol, cost) or reported (protocol ``reported``).

    ``psnr``/``ssim`` map a protocol name to the mean over images; cost fields are None for
    reported rows.
    """

    model: str
    test_set: str
    source: str
    psnr: dict[str, float]
    ssim: dict[str, float]
    trained_on: str | None = None
    images: int | None = None
    params: int | None = None
    flops: int | None = None
    ms_per_image: float | None = None
    device: str | None = None
    network: str | None = None  # the network the checkpoint was scored as (LoadedNetwork.scored)


class _TimedNetwork(nn.Module):
    """Wraps a network and records the seconds of each forward pass (synchronised on CUDA)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seconds: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        """Run the wrapped network on ``x`` and record how long it took."""
        _synchronize(x.device)
        start = time.perf_counter()
        output = self.net(x)
        _synchronize(x.device)
        self.seconds.append(time.perf_counter() - start)
        return output


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_entries(path: str, kind: str, keys: Mapping[str, bool]) -> list[dict[str, str]]:
    """A YAML list of mappings with string values; required/optional keys checked, names unique."""
    entries = load_yaml(path, kind)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of {kind} entries, got {type(entries).__name__}")
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with keys {', '.join(keys)}, got {entry!r}")
        unknown = sorted(set(entry) - set(keys))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(keys)}")
        for key, required in keys.items():
            value = entry.get(key)
            if (required or value is not None) and (not isinstance(value, str) or not value):
                raise ValueError(f"{where}: {key!r} = {value!r}; expected a non-empty string")
        if entry["name"] in names:
            raise ValueError(f"{where}: name {entry['name']!r} is used twice")
        names.add(entry["name"])
    return entries


def read_models(path: str) -> list[ModelSpec]:
    """Read MODELS.yml: a list of ``{name, options, checkpoint, trained_on?}`` (paths relative to the cwd)."""
    return [ModelSpec(**entry) for entry in _read_entries(path, "models", _MODEL_KEYS)]


def read_test_sets(path: str) -> list[TestSetSpec]:
    """Read TESTSETS.yml: a list of ``{name, dataroot, layout?}`` (``lq_dir``/``gt_dir`` optional)."""
    return [TestSetSpec(**entry) for entry in _read_entries(path, "test sets", _TEST_SET_KEYS)]


def read_reported(path: str) -> list[Row]:
    """Published numbers (format of ``docs/reported.yml``) as rows with source ``reported (<citation>)``.

    Test sets a method was not reported on (``~``) give no row.
    """
    document = load_yaml(path, "reported-numbers")
    methods = document.get("methods") if isinstance(document, dict) else None
    if not isinstance(methods, list):
        raise ValueError(f"{path}: expected a mapping with a 'methods' list")
    rows = []
    for index, method in enumerate(methods):
        try:
            name, citation, results = method["method"], method["citation"], method["results"]
            protocol = method["protocol"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: method {index} needs method, citation, protocol and results") from None
        if not isinstance(results, dict):
            raise ValueError(f"{path}: {name}: results must map test sets to {{psnr, ssim}} or ~")
        if protocol != REPORTED:
            raise ValueError(f"{path}: {name}: protocol {protocol!r}; reported numbers use {REPORTED!r}")
        for test_set, numbers in results.items():
            if numbers is None:
                continue
            rows.append(
                Row(
                    model=name,
                    test_set=test_set,
                    source=f"{REPORTED} ({citation})",
                    psnr={REPORTED: float(numbers["psnr"])},
                    ssim={REPORTED: float(numbers["ssim"])},
                )
            )
    return rows


def _dataset(spec: TestSetSpec) -> DerainPairedDataset:
    section = dataset_section(spec.dataroot, spec.layout, spec.name)
    section.update({key: value for key, value in (("lq_dir", spec.lq_dir), ("gt_dir", spec.gt_dir)) if value})
    dataset = test_pairs(section)
    if len(dataset) == 0:
        raise ValueError(f"test set {spec.name!r}: no image pairs in {spec.dataroot}")
    return dataset


def _bgr_uint8(tensor: Tensor) -> np.ndarray:
    return tensor2img(tensor, rgb2bgr=True, min_max=(0, 1))


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device (examples: cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available")
    return device


def run_leaderboard(
    models: Sequence[ModelSpec],
    test_sets: Sequence[TestSetSpec],
    protocols: Sequence[str],
    device: str = "cpu",
    progress: bool = True,
) -> list[Row]:
    """Score every model on every test set; one measured row per pair, test sets in the outer order.

    Protocols, test folders and checkpoints are all checked before any image is derained.

    Args:
        models: The checkpoints to score.
        test_sets: The original test folders.
        protocols: Names from :data:`erl_plugin.metrics.protocols.PROTOCOLS`; the first one is the
            matrix's.
        device: Torch device to run on. Default: ``"cpu"``.
        progress: Show a progress bar over images on stderr. Default: True.

    Raises:
        ValueError: For an unknown protocol or device, a test folder without pairs or not matching
            its layout, a checkpoint that does not fit its options' ``network_g``.
        FileNotFoundError: For a missing options file, checkpoint or test folder.
    """
    if not protocols:
        raise ValueError("no protocol given")
    protocols = [check_protocol(name) for name in protocols]
    dev = _device(device)
    datasets = {spec.name: _dataset(spec) for spec in test_sets}
    loaded = {spec.name: load_network(spec.options, spec.checkpoint) for spec in models}
    nets = {name: network.net.to(dev) for name, network in loaded.items()}
    costs = {name: complexity(net, COMPLEXITY_SHAPE) for name, net in nets.items()}
    device_label = device_name(dev)
    rows = []
    total = len(models) * sum(len(dataset) for dataset in datasets.values())
    with tqdm(total=total, unit="image", disable=not progress) as bar:
        for test_set, dataset in datasets.items():
            for spec in models:
                bar.set_description(f"{spec.name} on {test_set}")
                timed = _TimedNetwork(nets[spec.name])
                scores: dict[str, list[float]] = {f"{kind} {p}": [] for kind in ("psnr", "ssim") for p in protocols}
                for index in range(len(dataset)):
                    item = dataset[index]
                    rainy, clean = _bgr_uint8(item["lq"]), _bgr_uint8(item["gt"])
                    if index == 0:
                        derain(timed, rainy)  # warm-up: first-call allocations and kernel selection
                        timed.seconds.clear()
                    output = derain(timed, rainy)
                    for protocol in protocols:
                        scores[f"psnr {protocol}"].append(psnr(output, clean, protocol))
                        scores[f"ssim {protocol}"].append(ssim(output, clean, protocol))
                    bar.update()
                rows.append(
                    Row(
                        model=spec.name,
                        test_set=test_set,
                        source=MEASURED,
                        psnr={p: float(np.mean(scores[f"psnr {p}"])) for p in protocols},
                        ssim={p: float(np.mean(scores[f"ssim {p}"])) for p in protocols},
                        trained_on=spec.trained_on,
                        images=len(dataset),
                        params=costs[spec.name]["params"],
                        flops=costs[spec.name]["flops"],
                        ms_per_image=statistics.median(timed.seconds) * 1e3,
                        device=device_label,
                        network=loaded[spec.name].scored,
                    )
                )
    return rows


ROW_COLUMNS = ("model", "network scored", "trained on", "test set", "images", "source")
"""A row's leading columns, before its scores and costs, in the Markdown table and the CSV."""


def _score_columns(protocols: Sequence[str]) -> list[str]:
    return [f"{metric} ({protocol})" for protocol in protocols for metric in ("PSNR", "SSIM")]


def _cost_columns() -> list[str]:
    side = f"{COMPLEXITY_SHAPE[2]}x{COMPLEXITY_SHAPE[3]}"
    return ["params", f"GFLOPs (MACs) at {side}", "ms/image"]


def _protocol_columns(rows: Sequence[Row], protocols: Sequence[str]) -> list[str]:
    reported = any(row.source != MEASURED for row in rows)
    return [*protocols, REPORTED] if reported else list(protocols)


def _cells(row: Row, protocols: Sequence[str], psnr_digits: int, ssim_digits: int) -> list[str]:
    cells = []
    for protocol in protocols:
        if protocol not in row.psnr:
            cells += ["", ""]
        elif row.source == MEASURED:
            cells += [f"{row.psnr[protocol]:.{psnr_digits}f}", f"{row.ssim[protocol]:.{ssim_digits}f}"]
        else:  # published numbers keep the precision they were published with
            cells += [f"{row.psnr[protocol]:.2f}", f"{row.ssim[protocol]:.3f}"]
    return cells


def _cost_cells(row: Row) -> list[str]:
    if row.source != MEASURED:
        return ["", "", ""]
    return [f"{row.params:,}", f"{row.flops / 1e9:.2f}", f"{row.ms_per_image:.1f}"]


def leaderboard_markdown(rows: Sequence[Row], protocols: Sequence[str]) -> str:
    """The rows as a Markdown table headed by the device, the protocols and how costs were measured."""
    devices = sorted({row.device for row in rows if row.device})
    columns = _protocol_columns(rows, protocols)
    lines = [
        f"Leaderboard. Device: {', '.join(devices) or 'n/a'}. Means over each test set at full resolution; "
        f"protocols: {', '.join(protocols)} (see erl_plugin.metrics.protocols). Params and GFLOPs (MACs) "
        f"at {'x'.join(map(str, COMPLEXITY_SHAPE))}; ms/image = median of one forward pass per image "
        "after one warm-up pass."
    ]
    if REPORTED in columns:
        lines[0] += " Rows with source 'reported' are published numbers under each paper's own protocol."
    header = [*ROW_COLUMNS, *_score_columns(columns), *_cost_columns()]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in _ordered(rows):
        cells = [row.model, row.network or "", row.trained_on or "", row.test_set]
        cells.append("" if row.images is None else str(row.images))
        cells += [row.source, *_cells(row, columns, 2, 4), *_cost_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ordered(rows: Sequence[Row]) -> list[Row]:
    """Rows grouped by test set (first appearance), measured before reported within a group."""
    order = {name: index for index, name in reversed(list(enumerate(row.test_set for row in rows)))}
    return sorted(rows, key=lambda row: (order[row.test_set], row.source != MEASURED))


def leaderboard_csv(rows: Sequence[Row], protocols: Sequence[str]) -> str:
    """The rows as CSV text: scores to 4 decimals (reported ones to 2/3, as published), ``device`` a column."""
    columns = _protocol_columns(rows, protocols)
    header = [*ROW_COLUMNS, *_score_columns(columns), "params", _cost_columns()[1], "ms/image", "device"]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for row in _ordered(rows):
        measured = row.source == MEASURED
        cells = [row.model, row.network or "", row.trained_on or "", row.test_set, row.images or "", row.source]
        cells += _cells(row, columns, 4, 4)
        cells += [row.params, f"{row.flops / 1e9:.4f}", f"{row.ms_per_image:.3f}"] if measured else ["", "", ""]
        writer.writerow([*cells, row.device or ""])
    return text.getvalue()


def matrix_cells(rows: Sequence[Row]) -> tuple[list[tuple[str, str]], list[str], dict[tuple[str, str], Row]]:
    """Measured rows as a grid: ``(trained on, model)`` row keys, test-set columns, and the cells."""
    measured = [row for row in rows if row.source == MEASURED]
    models = list(dict.fromkeys((row.trained_on or "", row.model) for row in measured))
    test_sets = list(dict.fromkeys(row.test_set for row in measured))
    return models, test_sets, {(row.model, row.test_set): row for row in measured}


def matrix_markdown(rows: Sequence[Row], protocol: str) -> str:
    """Trained-on x tested-on PSNR/SSIM under ``protocol`` as Markdown (the rebuttal's Table R2 shape)."""
    models, test_sets, cells = matrix_cells(rows)
    lines = [
        f"Cross-dataset matrix: PSNR (dB)/SSIM, protocol {protocol}; rows = training set (model), columns = test set.",
        "",
        "| trained on | model | " + " | ".join(test_sets) + " |",
        "|" + " --- |" * (len(test_sets) + 2),
    ]
    for trained_on, model in models:
        scores = [cells.get((model, test_set)) for test_set in test_sets]
        text = [f"{row.psnr[protocol]:.2f}/{row.ssim[protocol]:.4f}" if row else "" for row in scores]
        lines.append(f"| {trained_on} | {model} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def matrix_csv(rows: Sequence[Row], protocol: str) -> str:
    """The matrix as CSV text: one PSNR and one SSIM column per test set, to 4 decimals."""
    models, test_sets, cells = matrix_cells(rows)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["trained on", "model", *[f"{t} {m} ({protocol})" for t in test_sets for m in ("PSNR", "SSIM")]])
    for trained_on, model in models:
        values: list[Any] = [trained_on, model]
        for test_set in test_sets:
            row = cells.get((model, test_set))
            values += [f"{row.psnr[protocol]:.4f}", f"{row.ssim[protocol]:.4f}"] if row else ["", ""]
        writer.writerow(values)
    return text.getvalue()


def leaderboard_files(matrix: bool = False) -> tuple[str, ...]:
    """The names :func:`write_leaderboard` writes."""
    return ("leaderboard.md", "leaderboard.csv", *(("matrix.md", "matrix.csv") if matrix else ()))


def write_leaderboard(
    out: OutputFolder, rows: Sequence[Row], protocols: Sequence[str], matrix: bool = False
) -> list[str]:
    """Write ``leaderboard.md``/``.csv`` (and ``matrix.md``/``.csv`` under the first protocol) into ``out``.

    Returns:
        The paths written.
    """
    texts = [leaderboard_markdown(rows, protocols) + "\n", leaderboard_csv(rows, protocols)]
    if matrix:
        texts += [matrix_markdown(rows, protocols[0]) + "\n", matrix_csv(rows, protocols[0])]
    return [str(out.write_text(name, text)) for name, text in zip(leaderboard_files(matrix), texts, strict=True)]
