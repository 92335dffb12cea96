"""One prepared run that checks the CUDA paths: correctness, torchrun with nccl, speed and fidelity.

:func:`run_gpu_check` runs four parts in turn, each under its own share of a time budget, and keeps
going when one fails or runs out of time:

1. **correctness**: MEMD and ERLNet (CLGD, MLGD with ``inject: decoder`` and ``inject: encoder``)
   forward and backward on the device against the CPU in fp32 with TF32 off (the largest absolute
   difference of the output and of the gradients against :data:`RTOL` x the largest CPU value +
   :data:`ATOL`); one ERLModel step per MA_D stage on the device and on the CPU (losses finite and
   alike); a checkpoint of a device model loaded on the CPU, and back, giving the same output.
2. **distributed**: ``python -m torch.distributed.run --standalone`` (torchrun) with one process per
   GPU training ERL-Net through ``erl_plugin.train --launcher pytorch`` (nccl; on the CPU the plugin's
   gloo patch) on rain rendered on the fly, across every MA_D stage boundary; then the same command with
   ``--auto_resume``, which must resume from the last state and finish.
3. **speed**: training steps of MEMD and of ERL stage II, and inference at one size and tiled on a larger
   image, in fp32, bf16 autocast, bf16 + channels_last and with ``torch.compile``, through
   :mod:`erl_dev.benchmark`; peak memory, and achieved TFLOP/s from the FLOP count against
   the card's bf16 dense peak (:data:`BF16_DENSE_PEAK_TFLOPS`).
4. **fidelity**: MEMD against ERL-Net at equal iterations on synthetic rain, scored on held-out photos
   (protocol ``basicsr``).

``dry_run`` runs every part on the CPU with tiny networks and sizes (gloo, ``torch.compile`` with the
``eager`` backend), in about a minute: the suite's test of this module.
"""

import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from erl_dev.benchmark import (
    FP32,
    Setting,
    benchmark_networks,
    erl_stages,
    fast_setting,
    inference_benchmark,
    median_seconds,
    model_options,
    peak_memory,
    train_benchmark,
)
from erl_plugin.archs import MEMD, ERLNet
from erl_plugin.archs.complexity import complexity
from erl_plugin.data.lmdb_writer import write_paired_lmdb
from erl_plugin.data.synthetic_dataset import SKIMAGE_TEST_PHOTOS, SyntheticRainDataset
from erl_plugin.data.synthetic_rain import write_png
from erl_plugin.evaluation.inference import derain_tiled
from erl_plugin.metrics import psnr
from erl_plugin.models import DerainModel, ERLModel
from erl_plugin.utils.outputs import write_text
from erl_plugin.utils.speed import device_name, prepare_network, resolve_precision

RTOL = 1e-4
"""Correctness: allowed difference, relative to the largest absolute CPU value of the compared tensor."""
ATOL = 1e-6
"""Correctness: allowed absolute difference on top of :data:`RTOL`."""
LOSS_RTOL = 1e-3
"""Model steps: allowed relative difference of device and CPU losses (Adam's first steps move by +-lr)."""
BF16_DENSE_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))
"""Dense bf16 tensor-core peaks (TFLOP/s) by a substring of the device name, first match wins (H100: SXM)."""
PARTS = (("correctness", 0.15), ("distributed", 0.25), ("speed", 0.40), ("fidelity", 0.20))
"""The parts in order, with their shares of the budget; time a part leaves unused goes to the next."""
CHECK_PARTS = ("correctness", "distributed")
"""The parts whose failures fail the run (speed and fidelity report)."""
FLAGSHIP = {"type": "MEMD", "num_feat": 32, "num_dense_layers": 4, "growth_rate": 32}
DEMO = {"type": "MEMD", "num_feat": 16, "num_dense_layers": 3, "growth_rate": 16}
TINY = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


@dataclass(frozen=True)
class Plan:
    """Every size of one run: the GPU run's (:func:`gpu_plan`) or the dry run's (:func:`dry_plan`)."""

    dry_run: bool
    device: torch.device
    backbone: dict[str, Any]
    check_batch: int
    check_side: int
    ddp_procs: int
    ddp_stage_iters: tuple[int, ...]
    ddp_batch: int
    ddp_patch: int
    speed_batch: int
    speed_patch: int
    repeats: int
    warmup: int
    infer_side: int
    tiled_side: int
    tile: int
    overlap: int
    compile: dict[str, Any]
    fidelity_backbone: dict[str, Any]
    fidelity_stage_iters: tuple[int, ...]
    fidelity_batch: int
    fidelity_patch: int
    fidelity_images: int
    fidelity_side: int


def gpu_plan(device: torch.device) -> Plan:
    """The flagship MEMD (``options/erl_rain100h.yml``) at the paper's 320x320 crops, batch 16, on CUDA."""
    return Plan(
        dry_run=False,
        device=device,
        backbone=FLAGSHIP,
        check_batch=2,
        check_side=64,
        ddp_procs=torch.cuda.device_count(),
        ddp_stage_iters=(2, 2, 2, 2),
        ddp_batch=4,
        ddp_patch=64,
        speed_batch=16,
        speed_patch=320,
        repeats=10,
        warmup=3,
        infer_side=320,
        tiled_side=1024,
        tile=512,
        overlap=32,
        compile={},
        fidelity_backbone=DEMO,
        fidelity_stage_iters=(50, 200, 100, 100),
        fidelity_batch=8,
        fidelity_patch=48,
        fidelity_images=24,
        fidelity_side=128,
    )


def dry_plan() -> Plan:
    """Tiny networks and sizes on the CPU; one gloo process; ``torch.compile`` with the eager backend."""
    return Plan(
        dry_run=True,
        device=torch.device("cpu"),
        backbone=TINY,
        check_batch=2,
        check_side=16,
        ddp_procs=1,  # as on a one-GPU machine; several processes are the torchrun tests' subject
        ddp_stage_iters=(1, 1, 1, 1),
        ddp_batch=2,
        ddp_patch=16,
        speed_batch=2,
        speed_patch=32,
        repeats=1,
        warmup=1,
        infer_side=32,
        tiled_side=64,
        tile=40,
        overlap=8,
        compile={"backend": "eager"},
        fidelity_backbone=TINY,
        fidelity_stage_iters=(1, 2, 1, 1),
        fidelity_batch=2,
        fidelity_patch=32,
        fidelity_images=4,
        fidelity_side=48,
    )


@dataclass
class Row:
    """One check or measurement: its name, a readable result, ``ok`` / ``failed: ...`` / ``skipped: ...``."""

    name: str
    result: str = ""
    status: str = "ok"
    values: dict[str, Any] = field(default_factory=dict)


Unit = tuple[str, Callable[[], list[Row]]]
"""A named step of a part, producing rows; the name labels its row when it fails or runs out of time."""


class OutOfTime(Exception):
    """Raised inside a step when its part's time cap is reached."""


@contextmanager
def _time_cap(seconds: float) -> Iterator[None]:
    """Raise :class:`OutOfTime` in the main thread after ``seconds``."""

    def stop(signum: int, frame: Any) -> None:
        raise OutOfTime

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]


def run_units(units: Sequence[Unit], deadline: float) -> tuple[list[Row], dict[str, float]]:
    """Run the steps in order until ``deadline`` (``time.monotonic``); a failing step fails its row only.

    Returns:
        The rows, and the seconds each step that ran took.
    """
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    for name, unit in units:
        start = time.monotonic()
        if deadline - start <= 0:
            rows.append(Row(name, status="skipped: time"))
            continue
        try:
            with _time_cap(deadline - start):
                rows += unit()
        except OutOfTime:
            rows.append(Row(name, status="skipped: time"))
        except Exception as error:  # noqa: BLE001 (a step's failure is reported; the run goes on)
            rows.append(Row(name, status=f"failed: {_one_line(error)}"))
        seconds[name] = time.monotonic() - start
    return rows, seconds


def part_status(rows: Sequence[Row]) -> str:
    """``failed: <first failure>``, else ``skipped: time`` when a row ran out of time, else ``ok``."""
    for row in rows:
        if row.status.startswith("failed"):
            return f"failed: {row.name}: {row.status.removeprefix('failed: ')}"
    return "skipped: time" if any(row.status == "skipped: time" for row in rows) else "ok"


# ------------------------------------------------------------------------------------------ correctness
@contextmanager
def _no_tf32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers its fp32_precision settings
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _compare(name: str, device: Tensor, cpu: Tensor) -> dict[str, float]:
    """Largest absolute difference, the tolerance it is held to, and whether it holds."""
    diff = (device.detach().double().cpu() - cpu.detach().double()).abs().max().item()
    tolerance = RTOL * cpu.detach().double().abs().max().item() + ATOL
    return {f"{name}_max_abs_diff": diff, f"{name}_tolerance": tolerance, f"{name}_ok": diff <= tolerance}


def _forward_backward(net: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The output and every parameter's gradient of a loss over the output (and ERLNet's features)."""
    net.zero_grad(set_to_none=True)
    if isinstance(net, ERLNet):
        out, features = net(x, return_features=True)
        loss = out.square().mean() + sum(feature.square().mean() for feature in features)
    else:
        out = net(x)
        loss = out.square().mean()
    loss.backward()
    grads = {name: p.grad.detach().cpu() for name, p in net.named_parameters() if p.grad is not None}
    return out.detach().cpu(), grads


def _networks(backbone: dict[str, Any]) -> dict[str, Callable[[], nn.Module]]:
    kwargs = {k: v for k, v in backbone.items() if k != "type"}
    # zero_init off: every branch of the residual encoder then carries a gradient
    return {
        "MEMD": lambda: MEMD(**kwargs),
        "ERLNet CLGD": lambda: ERLNet(copy.deepcopy(backbone), entangle="clgd", zero_init=False),
        "ERLNet MLGD, inject decoder": lambda: ERLNet(copy.deepcopy(backbone), "mlgd", "decoder", zero_init=False),
        "ERLNet MLGD, inject encoder": lambda: ERLNet(copy.deepcopy(backbone), "mlgd", "encoder", zero_init=False),
    }


def _network_check(plan: Plan, name: str, build: Callable[[], nn.Module]) -> list[Row]:
    torch.manual_seed(0)
    net = build()
    on_device = copy.deepcopy(net).to(plan.device)
    x = torch.rand(plan.check_batch, 3, plan.check_side, plan.check_side)
    with _no_tf32():
        out_cpu, grads_cpu = _forward_backward(net, x)
        out_dev, grads_dev = _forward_backward(on_device, x.to(plan.device))
    if set(grads_cpu) != set(grads_dev):
        missing = sorted(set(grads_cpu) ^ set(grads_dev))
        return [Row(f"{name} forward + backward", status=f"failed: gradients of {missing} on one side only")]
    keys = sorted(grads_cpu)
    values = {
        **_compare("output", out_dev, out_cpu),
        **_compare(
            "grad", torch.cat([grads_dev[k].flatten() for k in keys]), torch.cat([grads_cpu[k].flatten() for k in keys])
        ),
        "parameters_with_grad": len(keys),
    }
    result = (
        f"output {values['output_max_abs_diff']:.2e} (tol {values['output_tolerance']:.1e}), "
        f"gradients of {len(keys)} tensors {values['grad_max_abs_diff']:.2e} (tol {values['grad_tolerance']:.1e})"
    )
    bad = [part for part in ("output", "grad") if not values[f"{part}_ok"]]
    status = "ok" if not bad else f"failed: {' and '.join(bad)} beyond tolerance"
    return [Row(f"{name} forward + backward", result, status, values)]


def _stage_losses(plan: Plan, device: torch.device, data: dict[str, Tensor], folder: str) -> dict[str, dict]:
    torch.manual_seed(0)
    model = ERLModel(model_options(plan.backbone, folder, device, "ERLModel", FP32))
    losses = {}
    for stage, step in erl_stages(model, data):
        step()
        losses[stage] = dict(model.log_dict)
    return losses


def _model_steps(plan: Plan) -> list[Row]:
    torch.manual_seed(0)
    data = {key: torch.rand(plan.check_batch, 3, plan.check_side, plan.check_side) for key in ("lq", "gt")}
    with tempfile.TemporaryDirectory() as folder, _no_tf32():
        on_device = _stage_losses(plan, plan.device, data, folder)
        on_cpu = _stage_losses(plan, torch.device("cpu"), data, folder)
    rows = []
    for stage, losses in on_device.items():
        finite = all(math.isfinite(value) for value in losses.values())
        diffs = {name: abs(value - on_cpu[stage][name]) for name, value in losses.items()}
        alike = all(diffs[name] <= LOSS_RTOL * abs(on_cpu[stage][name]) + ATOL for name in losses)
        result = ", ".join(
            f"{name} {value:.5f} (CPU {on_cpu[stage][name]:.5f}, diff {diffs[name]:.1e})"
            for name, value in losses.items()
        )
        status = "ok" if finite and alike else f"failed: {'non-finite loss' if not finite else 'device and CPU differ'}"
        rows.append(Row(f"ERLModel step, {stage}", result, status, {"device": losses, "cpu": on_cpu[stage]}))
    return rows


def _test_output(model: ERLModel, x: Tensor) -> Tensor:
    model.feed_data({"lq": x})
    model.test()
    return model.output.cpu()


def _checkpoint_round_trip(plan: Plan) -> list[Row]:
    cpu = torch.device("cpu")
    x = torch.rand(plan.check_batch, 3, plan.check_side, plan.check_side, generator=torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as folder, _no_tf32():
        directions = (
            (plan.device, cpu, f"checkpoint saved on the device ({plan.device}), loaded on the CPU"),
            (cpu, plan.device, f"checkpoint saved on the CPU, loaded on the device ({plan.device})"),
        )
        for index, (source, target, name) in enumerate(directions):
            torch.manual_seed(index)
            saver = ERLModel(model_options(plan.backbone, folder, source, "ERLModel", FP32))
            with torch.no_grad():  # weights away from the initialisation, zero-initialised projections included
                for param in saver.get_bare_model(saver.net_g).parameters():
                    param.add_(torch.randn(param.shape).to(param.device) * 0.01)
            label = f"roundtrip{index}_net_g"
            saver.save_network(saver.net_g, label, 0)
            torch.manual_seed(index + 10)  # other initial weights, which the checkpoint must replace
            opt = model_options(plan.backbone, folder, target, "ERLModel", FP32)
            opt["path"]["pretrain_network_g"] = os.path.join(folder, f"{label}_0.pth")
            loader = ERLModel(opt)
            values = _compare("output", _test_output(loader, x), _test_output(saver, x))
            result = f"output {values['output_max_abs_diff']:.2e} (tol {values['output_tolerance']:.1e})"
            rows.append(Row(name, result, "ok" if values["output_ok"] else "failed: output beyond tolerance", values))
    return rows


def correctness_units(plan: Plan) -> list[Unit]:
    """The steps of part 1 (see the module docstring)."""
    units: list[Unit] = [
        (f"{name} forward + backward", lambda name=name, build=build: _network_check(plan, name, build))
        for name, build in _networks(plan.backbone).items()
    ]
    units += [("ERLModel steps", lambda: _model_steps(plan)), ("checkpoints", lambda: _checkpoint_round_trip(plan))]
    return units


def correctness_protocol(plan: Plan) -> str:
    """What part 1's numbers are."""
    return (
        f"Device {device_name(plan.device)} against the CPU, fp32, TF32 off; batch {plan.check_batch} of "
        f"{plan.check_side}x{plan.check_side}, backbone {plan.backbone}. Pass: max |device - CPU| <= {RTOL:g} x "
        f"max |CPU| + {ATOL:g}, for the output and for all gradients together (loss: mean square of the output, plus "
        f"of ERLNet's entangled features); model steps (ERLModel, MA_D + MLGD, one step per stage, Adam 1e-4): "
        f"losses finite and within {LOSS_RTOL:g} relative of the CPU's."
    )


# ------------------------------------------------------------------------------------------ distributed
def write_val_lmdb(plan: Plan, folder: Path) -> tuple[str, str]:
    """A tiny held-out paired LMDB (``folder/lq.lmdb``, ``folder/gt.lmdb``): rain on the test photos, seed 1."""
    held_out = SyntheticRainDataset(
        {"gt_size": plan.ddp_patch, "photos": list(SKIMAGE_TEST_PHOTOS), "num_samples": 2 * plan.ddp_procs, "seed": 1}
    )
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    pairs = []
    for index in range(len(held_out)):
        clean, rainy, _ = held_out.pair(index)
        write_png(images / f"rain-{index}.png", rainy)
        write_png(images / f"norain-{index}.png", clean)
        pairs.append((f"{index:04d}", str(images / f"rain-{index}.png"), str(images / f"norain-{index}.png")))
    return write_paired_lmdb(pairs, folder, overwrite=True, progress=False)


def ddp_options(plan: Plan, name: str, val_lq: str, val_gt: str) -> dict[str, Any]:
    """Tiny ERL options (MA_D + MLGD): rain rendered on the fly, validation on an LMDB, checkpoints every 2."""
    total = sum(plan.ddp_stage_iters)
    return {
        "name": name,
        "model_type": "ERLModel",
        "scale": 1,
        "num_gpu": 0 if plan.dry_run else "auto",
        "manual_seed": 0,
        "datasets": {
            "train": {
                "name": "RainOnTheFly",
                "type": "SyntheticRainDataset",
                "preset": "wide",
                "gt_size": plan.ddp_patch,
                "rescale": [0.5, 1.0],
                "num_samples": 4 * total * plan.ddp_batch * plan.ddp_procs,
                "num_worker_per_gpu": 0,
                "batch_size_per_gpu": plan.ddp_batch,
                "dataset_enlarge_ratio": 1,
                "prefetch_mode": None,
            },
            "val": {
                "name": "HeldOutRain",
                "type": "PairedImageDataset",
                "dataroot_lq": val_lq,
                "dataroot_gt": val_gt,
                "io_backend": {"type": "lmdb"},
            },
        },
        "network_g": {"type": "ERLNet", "backbone": dict(plan.backbone), "entangle": "mlgd", "inject": "decoder"},
        "path": {"pretrain_network_g": None, "pretrain_network_t": None, "strict_load_g": True, "resume_state": None},
        "train": {
            "strategy": "MA_D",
            "stage_iters": list(plan.ddp_stage_iters),
            "total_iter": total,
            "warmup_iter": -1,
            "optim_g": {"type": "Adam", "lr": 1e-3},
            "scheduler": {"type": "MultiStepLR", "milestones": [10**6], "gamma": 0.5},
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
            "feature_opt": {"type": "FeatureReconstructionLoss", "loss_weight": 0.01, "reduction": "mean"},
        },
        "val": {
            "val_freq": total,
            "save_img": False,
            "metrics": {"psnr_basicsr": {"type": "protocol_psnr", "protocol": "basicsr"}},
        },
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }


def torchrun_command(plan: Plan, options: Path, *extra: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m erl_plugin.train -opt OPTIONS --launcher pytorch ...``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={plan.ddp_procs}",
        "-m",
        "erl_plugin.train",
        "-opt",
        str(options),
        "--launcher",
        "pytorch",
        *extra,
    ]


def _child_env(plan: Plan) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds erl_plugin
    paths = [root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    if plan.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, and so gloo, even on a machine with GPUs
    return env


def _run_logged(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run ``command`` with its output in ``log``; its whole process group dies if this is interrupted."""
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return returncode, log.read_text(encoding="utf-8", errors="replace")


ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:\w+(?:Error|Exception)|error):.*)$", re.MULTILINE)


def _cause(log: str) -> str:
    """The first error a rank reported (``[rank0]: ValueError: ...``), else the log's last line."""
    found = ERROR_LINE.search(log)
    lines = [line for line in log.splitlines() if line.strip()]
    return (found.group(1) if found else lines[-1] if lines else "no output")[:200]


STAGE_LINE = re.compile(r"Stage \d+/\d+ '(\w+)', iterations \d+-\d+")


def distributed_units(plan: Plan, folder: Path) -> list[Unit]:
    """The steps of part 2: a torchrun training across the stages, then the same with ``--auto_resume``."""
    name = "gpu_check_ddp"
    experiment = folder / "experiments" / name
    total = sum(plan.ddp_stage_iters)
    options = folder / f"{name}.yml"
    env = _child_env(plan)
    backend = "gloo (CPU)" if plan.dry_run else "nccl"

    def train() -> list[Row]:
        shutil.rmtree(experiment, ignore_errors=True)  # an earlier check's, which BasicSR would archive
        folder.mkdir(parents=True, exist_ok=True)
        opt = ddp_options(plan, name, *write_val_lmdb(plan, folder / "val"))
        write_text(options, yaml.safe_dump(opt, sort_keys=False))
        code, log = _run_logged(torchrun_command(plan, options), folder, env, folder / "train.log")
        stages = STAGE_LINE.findall(log)
        models = experiment / "models"
        expected = [
            models / "net_t_teacher.pth",
            models / "memd_stage1.pth",
            models / "net_g_stage2.pth",
            models / "net_g_latest.pth",
            experiment / "training_states" / f"{total}.state",
        ]
        missing = [str(path.relative_to(folder)) for path in expected if not path.is_file()]
        world = f"World size (gpu number): {plan.ddp_procs}" in log
        values = {"returncode": code, "stages": stages, "missing": missing, "backend": backend, "log": "train.log"}
        result = f"{plan.ddp_procs} process(es), {backend}, {total} iterations, stages {' -> '.join(stages) or 'none'}"
        if code != 0:
            status = f"failed: exit {code}: {_cause(log)}"
        elif not world or len(stages) != len(plan.ddp_stage_iters) or missing:
            status = f"failed: world size logged {world}, stages {stages}, missing {missing}"
        else:
            status = "ok"
        return [Row("torchrun training across the stages", result, status, values)]

    def resume() -> list[Row]:
        if not (experiment / "training_states" / f"{total}.state").is_file():
            return [Row("torchrun --auto_resume", status="skipped: the first training left no final state")]
        code, log = _run_logged(torchrun_command(plan, options, "--auto_resume"), folder, env, folder / "resume.log")
        resumed = re.search(r"Resuming training from epoch: (\d+), iter: (\d+)\.", log)
        values = {"returncode": code, "resumed_at": int(resumed.group(2)) if resumed else None, "log": "resume.log"}
        result = f"resumed at iteration {values['resumed_at']} of {total}"
        if code != 0:
            status = f"failed: exit {code}: {_cause(log)}"
        elif values["resumed_at"] != total or "End of training" not in log:
            status = f"failed: resumed at {values['resumed_at']}, expected {total}, then the end of training"
        else:
            status = "ok"
        return [Row("torchrun --auto_resume (nothing deleted)", result, status, values)]

    return [("torchrun training across the stages", train), ("torchrun --auto_resume", resume)]


def distributed_protocol(plan: Plan) -> str:
    """What part 2 runs."""
    return (
        f"`python -m torch.distributed.run --standalone --nproc_per_node={plan.ddp_procs} -m erl_plugin.train -opt "
        f"gpu_check_ddp.yml --launcher pytorch` (then with `--auto_resume`) on {device_name(plan.device)}, "
        f"backend {'gloo (the plugin patch for the CPU)' if plan.dry_run else 'nccl'}; ERL-Net MA_D + MLGD, stages "
        f"{list(plan.ddp_stage_iters)}, batch {plan.ddp_batch} per process of {plan.ddp_patch}x{plan.ddp_patch} "
        "crops with rain rendered on the fly (SyntheticRainDataset), sharded validation on a held-out LMDB at the end; "
        "options, logs and the experiment folder in `distributed/`."
    )


# ------------------------------------------------------------------------------------------------ speed
def bf16_peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak from :data:`BF16_DENSE_PEAK_TFLOPS`, None when unknown (and on the CPU)."""
    return next((peak for key, peak in BF16_DENSE_PEAK_TFLOPS if key in name), None)


def speed_settings(plan: Plan) -> list[Setting]:
    """fp32, bf16 autocast, bf16 + channels_last, and that compiled."""
    return [FP32, fast_setting("bf16", False), fast_setting("bf16", True), fast_setting("bf16", True, plan.compile)]


class _Flops:
    """MACs of one forward pass per network (``MEMD``, ``ERL-Net``) and input side, counted once (on the CPU)."""

    def __init__(self, backbone: dict[str, Any]) -> None:
        self.nets = benchmark_networks(backbone)
        self.cache: dict[tuple[str, int], int] = {}

    def __call__(self, model: str, side: int) -> int:
        if (model, side) not in self.cache:
            self.cache[model, side] = complexity(self.nets[model], (1, 3, side, side))["flops"]
        return self.cache[model, side]


def _throughput(flop: float, seconds: float, peak: float | None) -> tuple[str, dict[str, Any]]:
    tflops = flop / seconds / 1e12
    share = f"{100 * tflops / peak:.1f}% of {peak:g}" if peak else "n/a"
    return f"{tflops:.3g} TFLOP/s ({share})", {"tflops": tflops, "share_of_bf16_peak": tflops / peak if peak else None}


def speed_units(plan: Plan) -> list[Unit]:
    """The steps of part 3; the compiled setting comes last, so that a slow compilation loses nothing else."""
    flops = _Flops(plan.backbone)
    peak = bf16_peak_tflops(device_name(plan.device))
    fp32, bf16, channels_last, compiled = speed_settings(plan)
    rows_of = {"MEMD (DerainModel)": "MEMD", "stage2": "ERL-Net"}

    def train(setting: Setting) -> list[Row]:
        rows = train_benchmark(
            plan.backbone,
            plan.speed_batch,
            plan.speed_patch,
            setting,
            plan.device,
            plan.repeats,
            plan.warmup,
            only=rows_of,
        )
        out = []
        for name, row in rows.items():
            flop = 2 * 3 * flops(rows_of[name], plan.speed_patch) * plan.speed_batch
            text, extra = _throughput(flop, row["step_s"], peak)
            result = (
                f"{1 / row['step_s']:.2f} it/s ({1e3 * row['step_s']:.1f} ms/step, {row['imgs_per_s']:.1f} img/s), "
                f"peak {row['peak_mib']:.0f} MiB, {text}"
            )
            if setting.compile is not None:
                result += f"; first step {row['first_step_s']:.1f} s (compilation)"
            label = "ERL stage II" if name == "stage2" else "MEMD"
            out.append(Row(f"train {label}, {setting.name}", result, values={**row, **extra, "setting": setting.name}))
        return out

    def infer(setting: Setting) -> list[Row]:
        side = plan.infer_side
        rows = inference_benchmark(
            plan.backbone, [(side, side)], [1], [setting], plan.device, plan.repeats, plan.warmup
        )
        out = []
        for row in rows:
            text, extra = _throughput(2 * flops(row["model"], side), row["ms_per_image"] / 1e3, peak)
            result = f"{row['ms_per_image']:.2f} ms/image, peak {row['peak_mib']:.0f} MiB, {text}"
            out.append(Row(f"infer {row['model']} {side}x{side}, {setting.name}", result, values={**row, **extra}))
        return out

    def tiled(setting: Setting) -> list[Row]:
        out = []
        for row in tiled_benchmark(plan, setting):
            # MACs scale with the pixel count (the networks are convolutional); the overlap is not counted
            flop = 2 * flops(row["model"], plan.infer_side) * (plan.tiled_side / plan.infer_side) ** 2
            text, extra = _throughput(flop, row["ms_per_image"] / 1e3, peak)
            result = f"{row['ms_per_image']:.1f} ms/image, peak {row['peak_mib']:.0f} MiB, {text}"
            name = f"infer {row['model']} {plan.tiled_side}x{plan.tiled_side} tiled, {setting.name}"
            out.append(Row(name, result, values={**row, **extra}))
        return out

    return [
        *[(f"train, {s.name}", lambda s=s: train(s)) for s in (fp32, bf16, channels_last)],
        *[
            (f"infer {plan.infer_side}x{plan.infer_side}, {s.name}", lambda s=s: infer(s))
            for s in (fp32, bf16, channels_last)
        ],
        *[(f"infer tiled, {s.name}", lambda s=s: tiled(s)) for s in (fp32, channels_last)],
        (f"train, {compiled.name}", lambda: train(compiled)),
        (f"infer {plan.infer_side}x{plan.infer_side}, {compiled.name}", lambda: infer(compiled)),
    ]


def tiled_benchmark(plan: Plan, setting: Setting) -> list[dict[str, Any]]:
    """Milliseconds per image of :func:`~erl_plugin.evaluation.inference.derain_tiled` on a large uint8 image."""
    torch.manual_seed(0)
    nets = {name: net.eval() for name, net in benchmark_networks(plan.backbone).items()}
    image = np.random.default_rng(0).integers(0, 256, (plan.tiled_side, plan.tiled_side, 3), dtype=np.uint8)
    dtype = resolve_precision(setting.amp, plan.device, "amp")
    rows = []
    for model, net in nets.items():
        prepared = prepare_network(net, plan.device, setting.channels_last, None)

        def run(net: nn.Module = prepared) -> None:
            derain_tiled(net, image, plan.tile, plan.overlap, plan.device, dtype, setting.channels_last)

        record: dict[str, Any] = {}
        with peak_memory(plan.device, record):
            seconds = median_seconds(run, plan.repeats, plan.warmup, plan.device)
        rows.append({"model": model, "setting": setting.name, "ms_per_image": seconds * 1e3, **record})
    return rows


def speed_protocol(plan: Plan) -> str:
    """What part 3's numbers are."""
    compile_note = f"torch.compile {plan.compile or 'defaults (inductor)'}"
    side, patch, tiled = plan.infer_side, plan.speed_patch, plan.tiled_side
    return (
        f"Timings on {device_name(plan.device)} (torch {torch.__version__}), median of {plan.repeats} after "
        f"{plan.warmup} warm-up run(s), erl_dev.benchmark; backbone {plan.backbone}. Training: batch "
        f"{plan.speed_batch} of {patch}x{patch}, DerainModel (MEMD) and ERLModel stage II (MA_D + MLGD), fp32 with "
        f"torch's TF32 defaults; {compile_note}, its first step reported apart. Inference: batch 1 of {side}x{side}, "
        f"eval, inference mode; tiled: derain_tiled on a {tiled}x{tiled} uint8 image, tiles {plan.tile}, overlap "
        f"{plan.overlap}. Peak: CUDA allocator peak per measurement (CPU: process peak RSS). TFLOP/s: 2 FLOP per "
        "MAC (mmengine FlopAnalyzer, convolutions and matmuls) x forward MACs of the network (ERL-Net for stage II), "
        "x 3 for a training step (forward + backward; stage II's teacher pass and frozen weights not counted), tiled "
        "counted as the whole image; share of the card's dense bf16 peak (n/a: unknown)."
    )


# --------------------------------------------------------------------------------------------- fidelity
def _batches(dataset: SyntheticRainDataset, first: int, iters: int, batch: int) -> Iterator[dict[str, Tensor]]:
    """Batches ``first`` to ``first + iters - 1`` of one fixed sequence of samples."""
    for iteration in range(first, first + iters):
        samples = [dataset[(iteration * batch + j) % len(dataset)] for j in range(batch)]
        yield {key: torch.stack([sample[key] for sample in samples]) for key in ("lq", "gt")}


def _train(model: DerainModel, batches: Iterator[dict[str, Tensor]]) -> dict[str, float]:
    """BasicSR's loop, in process: learning rate (and ERLModel's stage), data, step; the last losses."""
    for iteration, data in enumerate(batches, start=1):
        model.update_learning_rate(iteration, warmup_iter=-1)
        model.feed_data(data)
        model.optimize_parameters(iteration)
    return dict(model.log_dict)


def fidelity_units(plan: Plan, folder: Path) -> list[Unit]:
    """The steps of part 4: train ERL-Net, train MEMD on the batches of its stages I-III, score both.

    The models write their checkpoints (ERL-Net's at every stage's end) into ``folder``.
    """
    teacher_iters, erl_iters = plan.fidelity_stage_iters[0], sum(plan.fidelity_stage_iters)
    trained: dict[str, nn.Module] = {}
    train_set = SyntheticRainDataset(
        {
            "phase": "train",
            "gt_size": plan.fidelity_patch,
            "rescale": [0.5, 1.0],
            "num_samples": erl_iters * plan.fidelity_batch,
        }
    )

    def options(model_type: str) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        opt = model_options(plan.fidelity_backbone, str(folder), plan.device, model_type, FP32)
        opt["train"]["optim_g"]["lr"] = 1e-3
        if model_type == "ERLModel":
            opt["train"].update(
                stage_iters=list(plan.fidelity_stage_iters),
                total_iter=erl_iters,
                stage_options={"stage2": {"optim_g": {"lr": 3e-4}}, "stage3": {"optim_g": {"lr": 1e-4}}},
            )
        return opt

    def train(model_type: str, label: str, first: int) -> list[Row]:
        torch.manual_seed(0)
        model = (ERLModel if model_type == "ERLModel" else DerainModel)(options(model_type))
        iters = erl_iters - first
        start = time.perf_counter()
        losses = _train(model, _batches(train_set, first, iters, plan.fidelity_batch))
        seconds = time.perf_counter() - start
        trained[label] = model.get_bare_model(model.net_g).eval()
        result = (
            f"{iters} iterations in {seconds:.1f} s on {device_name(plan.device)}, last l_pix {losses['l_pix']:.4f}"
        )
        return [Row(f"train {label}", result, values={"iterations": iters, "seconds": seconds, **losses})]

    def score() -> list[Row]:
        test_set = SyntheticRainDataset(
            {"phase": "val", "gt_size": plan.fidelity_side, "rescale": [0.5, 1.0], "photos": list(SKIMAGE_TEST_PHOTOS),
             "num_samples": plan.fidelity_images, "seed": 1}
        )  # fmt: skip
        pairs = [test_set.pair(index)[:2] for index in range(len(test_set))]
        scores = {"rainy input": [psnr(rainy, clean, "basicsr") for clean, rainy in pairs]}
        for label, net in trained.items():
            scores[label] = [psnr(derain_tiled(net, rainy, None), clean, "basicsr") for clean, rainy in pairs]
        rows = [
            Row(
                f"PSNR {label}", f"{np.mean(values):.2f} dB (basicsr)", values={"psnr": values, "mean": np.mean(values)}
            )
            for label, values in scores.items()
        ]
        if len(trained) == 2:
            erl, memd = (np.array(scores[label]) for label in trained)
            delta = erl - memd
            result = (
                f"{delta.mean():+.2f} dB (basicsr), ERL-Net ahead on {int((delta > 0).sum())} of {len(delta)} images"
            )
            rows.append(Row("PSNR ERL-Net - MEMD", result, values={"mean": float(delta.mean())}))
        return rows

    return [
        ("train ERL-Net", lambda: train("ERLModel", "ERL-Net (MA_D + MLGD)", 0)),
        ("train MEMD", lambda: train("DerainModel", "MEMD", teacher_iters)),  # the batches of stages I-III
        ("score", score),
    ]


def fidelity_protocol(plan: Plan) -> str:
    """What part 4's numbers are."""
    teacher, *stages = plan.fidelity_stage_iters
    patch, side = plan.fidelity_patch, plan.fidelity_side
    return (
        f"On {device_name(plan.device)}, one seed, backbone {plan.fidelity_backbone}: ERL-Net (MA_D + MLGD, teacher "
        f"{teacher}, stages I-III {stages} iterations, Adam 1e-3 / 3e-4 / 1e-4 in stages I / II / III) and MEMD "
        f"(DerainModel, {sum(stages)} iterations: ERL-Net's stage I-III iterations, the teacher not counted, as "
        f"`make demo` counts; Adam 1e-3; on the very batches of ERL-Net's stages I-III): {plan.fidelity_batch} "
        f"pairs of {patch}x{patch} per iteration rendered from scikit-image's training photos (SyntheticRainDataset, "
        f"`wide` rain, seed 0). PSNR protocol `basicsr` (BasicSR calculate_psnr, Y channel, no crop) on "
        f"{plan.fidelity_images} held-out pairs of {side}x{side}: crops of the test photos "
        f"{', '.join(SKIMAGE_TEST_PHOTOS)} (never trained on) with `wide` rain, seed 1."
    )


# --------------------------------------------------------------------------------------------- the run
def markdown(result: dict[str, Any]) -> str:
    """The summary table, then one table per part under the line that names its protocol and device."""
    lines = [
        f"# GPU check{' (dry run on the CPU)' if result['dry_run'] else ''}",
        "",
        f"Device: {result['device']}; torch {result['torch']}, CUDA {result['cuda']}; {result['gpus']} GPU(s); "
        f"budget {result['budget_s']:.0f} s, wall {result['wall_s']:.0f} s; "
        f"{'passed' if result['passed'] else 'FAILED'} (correctness and distributed checks that ran).",
        "",
        "| part | status | seconds | cap (s) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {part['status']} | {part['seconds']:.1f} | {part['cap_s']:.0f} |"
        for name, part in result["parts"].items()
    ]
    for index, (name, part) in enumerate(result["parts"].items(), start=1):
        lines += ["", f"## {index}. {name}: {part['status']}", "", part["protocol"], "", "| check | result | status |"]
        lines.append("| --- | --- | --- |")
        lines += [f"| {row['name']} | {row['result']} | {row['status']} |" for row in part["rows"]]
    return "\n".join(lines) + "\n"


def _write(out_dir: Path, result: dict[str, Any]) -> None:
    write_text(out_dir / "gpu_check.json", json.dumps(result, indent=2, default=float) + "\n")
    write_text(out_dir / "gpu_check.md", markdown(result))


def run_gpu_check(
    out_dir: str | os.PathLike[str], *, dry_run: bool, budget_s: float = 480.0, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the four parts into ``out_dir`` (``gpu_check.md``, ``gpu_check.json``, ``distributed/``, ``fidelity/``).

    Args:
        out_dir: Output folder, created if needed; results are rewritten after every part.
        dry_run: Tiny sizes on the CPU (:func:`dry_plan`); else the GPU sizes (:func:`gpu_plan`) on CUDA.
        budget_s: Total time; each part's cap is its share in :data:`PARTS` plus what earlier parts left.
        log: Where the progress lines go; default: stdout, flushed.

    Returns:
        The JSON-ready result; ``passed`` says whether every correctness and distributed check that ran passed.
    """
    log = log or (lambda line: print(line, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = dry_plan() if dry_run else gpu_plan(torch.device("cuda"))
    result: dict[str, Any] = {
        "device": device_name(plan.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "dry_run": dry_run,
        "budget_s": budget_s,
        "wall_s": 0.0,
        "passed": True,
        "plan": {**asdict(plan), "device": str(plan.device)},
        "parts": {},
    }
    builders = {
        "correctness": (correctness_units, correctness_protocol),
        "distributed": (lambda p: distributed_units(p, out / "distributed"), distributed_protocol),
        "speed": (speed_units, speed_protocol),
        "fidelity": (lambda p: fidelity_units(p, out / "fidelity"), fidelity_protocol),
    }
    start = time.monotonic()
    share = 0.0
    for name, fraction in PARTS:
        share += fraction
        deadline = start + share * budget_s
        part_start = time.monotonic()
        cap = deadline - part_start
        log(f"[gpu_check] {name}: start (cap {cap:.0f} s)")
        units, protocol = builders[name]
        try:
            rows, unit_seconds = run_units(units(plan), deadline)
        except Exception as error:  # noqa: BLE001 (a part that cannot even be set up is reported)
            rows, unit_seconds = [Row(name, status=f"failed: {_one_line(error)}")], {}
        status = part_status(rows)
        seconds = time.monotonic() - part_start
        result["parts"][name] = {
            "status": status,
            "seconds": seconds,
            "cap_s": cap,
            "protocol": protocol(plan),
            "rows": [asdict(row) for row in rows],
            "step_seconds": unit_seconds,
        }
        if name in CHECK_PARTS and status.startswith("failed"):
            result["passed"] = False
        result["wall_s"] = time.monotonic() - start
        _write(out, result)
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
        log(f"[gpu_check] {name}: {status} ({seconds:.1f} s)")
    return result
