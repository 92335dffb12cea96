"""Export a trained network to TorchScript and ONNX, and check the exported models against PyTorch.

What is exported is the network as ``erl-derain --no-tile`` runs an image (:class:`PaddedToGrid`): an
``(N, C, H, W)`` float32 batch (RGB in ``[0, 1]``) of any size, padded to the network's grid and the
output cropped back; the output is not clamped. Both formats are made by tracing on the CPU:

- TorchScript (``<name>.pt``): ``torch.jit.trace``. Scripting cannot compile these networks (MEMD's
  ``feature_info`` is a list of dataclasses, ERLNet calls closures and forward hooks), and a trace
  records the tensor ops they run, hooks included. Load it with ``torch.jit.load``.
- ONNX (``<name>.onnx``): ``torch.onnx.export(..., dynamo=False)``, opset :data:`OPSET`, with batch,
  height and width dynamic (input ``input``, output ``output``). The default torch.export-based
  exporter is not used: it needs ``onnxscript`` and specialises MEMD's padding on the example's size
  (its graph fails on sizes off the grid); the legacy TorchScript-based exporter traces the padding
  as the ops that compute it from the input's size.

A trace keeps only what tensors compute: a Python branch on a size is fixed at the example's size. So
every export is checked (:func:`check_exported`): the exported models run (TorchScript with
``torch.jit.load``, ONNX with onnxruntime on the CPU) on random batches of the sizes
:data:`CHECK_SIZES`, none of which the trace saw, and their outputs are compared with PyTorch's. A
difference above :data:`TOLERANCE`, or a size that fails to run, refuses the export
(:class:`ExportRefused`) and nothing is written.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from erl_plugin.archs.adapters import probe_input
from erl_plugin.archs.erl_arch import ERLNet
from erl_plugin.archs.memd_arch import pad_to_multiple
from erl_plugin.evaluation.evaluate import LoadedNetwork, load_network
from erl_plugin.evaluation.inference import network_grid
from erl_plugin.utils.outputs import OutputFolder

__all__ = [
    "CHECK_BATCH",
    "CHECK_SIZES",
    "FORMATS",
    "OPSET",
    "TOLERANCE",
    "CheckRow",
    "ExportDependencyError",
    "ExportRefused",
    "ExportReport",
    "PaddedToGrid",
    "check_exported",
    "export_network",
    "output_names",
    "to_onnx",
    "to_torchscript",
]

OPSET = 17
"""ONNX opset of the exported graphs."""
TOLERANCE = 1e-4
"""Largest max absolute difference (float32, outputs on a [0, 1] scale) between an exported model and PyTorch."""
CHECK_SIZES: tuple[tuple[int, int], ...] = ((37, 53), (64, 64), (101, 75))
"""Heights and widths of the check: none is the traced size, two are off the network's grid."""
CHECK_BATCH = 2
"""Images per check batch (the trace sees one, so the batch axis is checked as dynamic too)."""
TRACE_SIZE = (48, 40)
"""Height and width of the example input that is traced."""
CHECK_SEED = 0
"""Seed of the check's random images (a private generator)."""
FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
INPUT_NAME, OUTPUT_NAME = "input", "output"
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
"""The ONNX graph's dynamic axes, of its input and its output alike."""
ERROR_LINE = re.compile(r"\w+(Error|Exception): ")
"""A line that names its error's type, as the last line of a TorchScript interpreter's error does."""
ONNX_MISSING = "ONNX export needs onnx and onnxruntime: pip install 'erl-plugin[export]'"


class ExportDependencyError(ImportError):
    """onnx or onnxruntime is not installed; the message says what to install."""


class ExportRefused(ValueError):
    """The network could not be exported, or an exported model differs from PyTorch; nothing was written.

    ``report`` holds the check, when it ran.
    """

    def __init__(self, message: str, report: ExportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class PaddedToGrid(nn.Module):
    """A network as ``erl-derain`` runs a whole image: the input padded (reflect, bottom and right) to a
    multiple of ``grid`` and the output cropped back, so that every size goes through.

    For MEMD and ERLNet, which pad to their grid themselves, it computes exactly what the network does.
    """

    def __init__(self, net: nn.Module, grid: int) -> None:
        super().__init__()
        self.net = net
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        """The network's output for ``x``, of ``x``'s height and width."""
        return self.net(pad_to_multiple(x, self.grid))[..., : x.shape[-2], : x.shape[-1]]


@dataclass(frozen=True)
class CheckRow:
    """One exported model on one size: the max absolute difference from PyTorch, or why it did not run."""

    format: str
    height: int
    width: int
    difference: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        """Ran, and within :data:`TOLERANCE` (a NaN difference fails)."""
        return self.error is None and self.difference <= TOLERANCE

    def problem(self) -> str:
        """What went wrong, naming the format and the size ("" when it passed)."""
        size = f"{self.height}x{self.width}"
        if self.error is not None:
            return f"the {self.format} model fails on a {size} input: {self.error}"
        if not self.passed:
            return (
                f"the {self.format} model differs from PyTorch by {self.difference:.2e} on a {size} input "
                f"(tolerance {TOLERANCE:.0e})"
            )
        return ""


@dataclass
class ExportReport:
    """What :func:`export_network` did: the network exported, the check, the files written."""

    network: str
    rows: list[CheckRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckRow]:
        """The rows over :data:`TOLERANCE` or that failed to run."""
        return [row for row in self.rows if not row.passed]

    def table(self) -> str:
        """The check as a Markdown table, headed by what was compared and the tolerance."""
        lines = [
            f"check against PyTorch: float32 on the CPU, batches of {CHECK_BATCH} random images, "
            f"max |difference| <= {TOLERANCE:.0e}",
            "",
            "| format | size (HxW) | max abs difference | result |",
            "| --- | --- | --- | --- |",
        ]
        for row in self.rows:
            difference = "did not run" if row.error is not None else f"{row.difference:.1e}"
            lines.append(
                f"| {row.format} | {row.height}x{row.width} | {difference} | {'ok' if row.passed else 'REFUSED'} |"
            )
        return "\n".join(lines)


def output_names(name: str, formats: Sequence[str]) -> dict[str, str]:
    """``{format: file name}``: ``<name>.pt`` and/or ``<name>.onnx``.

    Raises:
        ValueError: An unknown format, none, or a name that is not a plain file name.
    """
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"export formats {list(formats)!r}: choose one or more of {', '.join(FORMATS)}")
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name:
        raise ValueError(
            f"export name {name!r}: a plain file name is needed (no folder, not starting with '.'); "
            "the files are <name>.pt and <name>.onnx"
        )
    return {fmt: f"{name}{SUFFIXES[fmt]}" for fmt in FORMATS if fmt in formats}


def _import_onnx() -> None:
    """Raise :class:`ExportDependencyError` unless onnx and onnxruntime import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ExportDependencyError(f"{ONNX_MISSING} ({error})") from None


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence what tracing, loading a trace and the legacy ONNX exporter always warn.

    Tracer warnings mark Python values the trace fixes (shape checks, flags); whether the trace holds is
    decided by the check on sizes it never saw, not by them. The deprecations are torch's, of
    ``torch.jit.trace``/``load`` and of the exporter used here (the module docstring says why).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        yield


def to_torchscript(module: nn.Module, example: Tensor) -> bytes:
    """``module`` traced on ``example`` (``torch.jit.trace``), as the bytes of a ``.pt`` file."""
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def to_onnx(module: nn.Module, example: Tensor) -> bytes:
    """``module`` traced on ``example`` into an ONNX graph (opset :data:`OPSET`, legacy exporter) with batch,
    height and width dynamic, as the bytes of a ``.onnx`` file (the exporter needs onnx)."""
    _import_onnx()
    buffer = io.BytesIO()
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: DYNAMIC_AXES},
        )
    return buffer.getvalue()


def _torchscript_runner(data: bytes) -> Callable[[Tensor], Tensor]:
    with _quiet_export():
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def _onnx_runner(data: bytes) -> Callable[[Tensor], Tensor]:
    _import_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # a node that fails is reported in the check, not logged too
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


RUNNERS = {"torchscript": _torchscript_runner, "onnx": _onnx_runner}


def _max_difference(output: Tensor, expected: Tensor) -> float:
    if output.shape != expected.shape:
        raise ValueError(f"output shape {tuple(output.shape)}, PyTorch gives {tuple(expected.shape)}")
    return float(np.max(np.abs(output.double().numpy() - expected.double().numpy()), initial=0.0))


def _one_line(error: Exception) -> str:
    """An error's message in one line, with its type: the last line naming an error (a TorchScript interpreter's
    message starts with its traceback), else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if ERROR_LINE.match(line)]
    line = (named[-1] if named else lines[0] if lines else "").rstrip(".")
    return line if ERROR_LINE.match(line) else f"{type(error).__name__}: {line}"


def _export_failure(fmt: str, network: LoadedNetwork, error: Exception) -> str:
    """Why ``fmt`` export failed; for ERLNet wrapped through ``entangle_at``, what to do instead."""
    reason = f"{fmt} export of {network.scored} failed: {_one_line(error)}"
    if not (isinstance(network.net, ERLNet) and network.net.hooked):
        return reason
    backbone = network.net.backbone_options["type"]
    return (
        f"{reason}. ERLNet wrapped through entangle_at uses forward hooks that a trace cannot follow through "
        f"{backbone}'s forward; export the backbone alone (a {backbone} checkpoint, such as the stage-I one, "
        f"under these options), or give {backbone} an adapter (docs/wrap_your_network.md) and export that ERLNet"
    )


def check_exported(
    reference: nn.Module, exported: Mapping[str, bytes], channels: int, sizes: Sequence[tuple[int, int]] = CHECK_SIZES
) -> list[CheckRow]:
    """Run each exported model and ``reference`` on the same random batches, one per size; compare.

    Args:
        reference: The module that was exported, in eval mode, on the CPU.
        exported: ``{format: file bytes}`` as :func:`to_torchscript` and :func:`to_onnx` give them.
        channels: Input channels.
        sizes: ``(height, width)`` of the batches.

    Returns:
        One row per format and size: the max absolute difference, or the error that stopped the run.

    Raises:
        ExportRefused: ``reference`` itself fails on a size.
    """
    generator = torch.Generator().manual_seed(CHECK_SEED)
    batches = [torch.rand(CHECK_BATCH, channels, height, width, generator=generator) for height, width in sizes]
    expected = []
    for batch in batches:
        try:
            with torch.no_grad():
                expected.append(reference(batch))
        except Exception as error:  # the network, not an export, fails: nothing to compare with
            size = "x".join(map(str, batch.shape[-2:]))
            raise ExportRefused(f"the network itself fails on a {size} input: {_one_line(error)}") from error
    rows = []
    for fmt, data in exported.items():
        run = RUNNERS[fmt](data)
        for batch, wanted in zip(batches, expected, strict=True):
            height, width = batch.shape[-2:]
            try:
                with torch.no_grad():
                    rows.append(CheckRow(fmt, height, width, _max_difference(run(batch), wanted)))
            except Exception as error:  # whatever stops a run is the check's finding, reported in its row
                rows.append(CheckRow(fmt, height, width, float("nan"), _one_line(error)))
    return rows


EXPORTERS = {"torchscript": to_torchscript, "onnx": to_onnx}


def export_network(
    opt_path: str,
    checkpoint: str,
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    formats: Sequence[str] = FORMATS,
    param_key: str = "params",
    overwrite: bool = False,
) -> ExportReport:
    """Build ``network_g`` of an options file with a checkpoint's weights (as ``erl-derain`` does), export it
    and check the exported models; write them into ``out_dir`` only when the check passes.

    Args:
        opt_path: Options file whose ``network_g`` built the checkpoint.
        checkpoint: BasicSR checkpoint.
        out_dir: Receives ``<name>.pt`` and/or ``<name>.onnx`` (an :class:`OutputFolder`: a file there that
            the tools did not write is never replaced).
        name: File name without suffix; default: the checkpoint's (``net_g_latest``).
        formats: Some of :data:`FORMATS`.
        param_key: The checkpoint's key of the weights.
        overwrite: Replace the files of an earlier export.

    Returns:
        The network exported (:attr:`LoadedNetwork.scored`), the check and the files written.

    Raises:
        ExportDependencyError: ONNX is asked for and onnx or onnxruntime is missing (before any work).
        ExportRefused: Tracing or exporting fails, or the check does not pass; nothing is written.
        OutputError: ``out_dir`` holds a file of that name not written by the tools, or an earlier export's
            without ``overwrite``.
        ValueError: A bad format or name, or a checkpoint that does not fit the options.
    """
    names = output_names(Path(checkpoint).stem if name is None else name, formats)
    if "onnx" in names:
        _import_onnx()
    with OutputFolder(out_dir, tool="export", overwrite=overwrite, inputs=[opt_path, checkpoint]) as out:
        out.claim(names.values())
        network = load_network(opt_path, checkpoint, param_key)
        module = PaddedToGrid(network.net.cpu().float(), network_grid(network.net)).eval()
        example = probe_input(module, *TRACE_SIZE)
        report = ExportReport(network.scored)
        exported = {}
        for fmt in names:
            try:
                exported[fmt] = EXPORTERS[fmt](module, example)
            except (RuntimeError, TypeError, ValueError) as error:
                raise ExportRefused(_export_failure(fmt, network, error), report) from error
        report.rows = check_exported(module, exported, channels=example.shape[1])
        if report.failures:
            problems = "; ".join(row.problem() for row in report.failures)
            raise ExportRefused(f"{network.scored} is not exported: {problems}; nothing was written", report)
        report.files = [out.write(names[fmt], data) for fmt, data in exported.items()]
    return report
