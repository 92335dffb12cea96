"""What ERL-Net costs over its MEMD backbone, and how fast the data path feeds training.

The MEMD step is BasicSR's ``SRModel`` training a plain MEMD; each ERL stage is ``ERLModel``
running that stage's ``optimize_parameters`` on the same batch. Times are medians over repeats
after warm-up, measured in one process so that the ratios compare like with like. Targets (from
the design): a stage II or III step at most 1.35x a MEMD step; ERL-Net inference at most 1.6x MEMD.
:func:`loader_benchmark` measures training patches per second from image folders and from LMDB.
"""

import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from basicsr.models.sr_model import SRModel

from erl_plugin.archs import MEMD, ERLNet
from erl_plugin.archs.complexity import complexity
from erl_plugin.models.erl_model import ERLModel

STEP_TARGET = 1.35
INFERENCE_TARGET = 1.6


def device_name(device: torch.device) -> str:
    """The card's name on CUDA, the processor otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _median_seconds(run: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model_options(backbone: dict[str, Any], folder: str, device: torch.device, erl: bool) -> dict[str, Any]:
    train: dict[str, Any] = {
        "optim_g": {"type": "Adam", "lr": 1e-4},
        "scheduler": {"type": "MultiStepLR", "milestones": [10**9], "gamma": 0.5},
        "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
    }
    if erl:
        train.update(
            strategy="MA_D",
            stage_iters=[1, 1, 1, 1],
            total_iter=4,
            feature_opt={"type": "FeatureReconstructionLoss", "loss_weight": 0.01},
        )
    return {
        "name": "benchmark",
        "is_train": True,
        "dist": False,
        "num_gpu": 1 if device.type == "cuda" else 0,
        "rank": 0,
        "world_size": 1,
        "network_g": {"type": "ERLNet", "backbone": backbone} if erl else dict(backbone),
        "path": {"models": folder, "training_states": folder},
        "train": train,
    }


def run_benchmark(
    backbone: dict[str, Any], batch: int, patch: int, repeats: int = 5, warmup: int = 2, device: str = "cpu"
) -> dict[str, Any]:
    """Measure MEMD and ERL-Net (MA_D, MLGD, inject decoder) on one device.

    Returns:
        A JSON-ready dict: the settings, the device, seconds per training step for MEMD and each
        ERL stage, seconds per inference (batch 1), parameters, FLOPs, and the ratios to MEMD.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    data = {"lq": torch.rand(batch, 3, patch, patch), "gt": torch.rand(batch, 3, patch, patch)}
    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        memd_model = SRModel(_model_options(backbone, folder, dev, erl=False))
        memd_model.feed_data(data)
        steps["MEMD"] = _median_seconds(lambda: memd_model.optimize_parameters(1), repeats, warmup, dev)
        erl_model = ERLModel(_model_options(backbone, folder, dev, erl=True))
        for index, stage in enumerate(erl_model.stages):
            erl_model._enter_stage(index)
            erl_model.feed_data(data)
            steps[stage.name] = _median_seconds(lambda: erl_model.optimize_parameters(1), repeats, warmup, dev)
    kwargs = {k: v for k, v in backbone.items() if k != "type"}
    memd = MEMD(**kwargs).to(dev).eval()
    erl = ERLNet(copy.deepcopy(backbone)).to(dev).eval()
    image = torch.rand(1, 3, patch, patch, device=dev)
    with torch.no_grad():
        inference = {
            "MEMD": _median_seconds(lambda: memd(image), repeats, warmup, dev),
            "ERL-Net": _median_seconds(lambda: erl(image), repeats, warmup, dev),
        }
    sizes = {
        "MEMD": complexity(memd, (1, 3, patch, patch)),
        "ERL-Net": complexity(erl, (1, 3, patch, patch)),
    }
    return {
        "device": device_name(dev),
        "torch": torch.__version__,
        "backbone": backbone,
        "batch": batch,
        "patch": patch,
        "repeats": repeats,
        "train_step_s": steps,
        "train_step_ratio": {name: seconds / steps["MEMD"] for name, seconds in steps.items()},
        "inference_s": inference,
        "inference_ratio": inference["ERL-Net"] / inference["MEMD"],
        "params": {name: size["params"] for name, size in sizes.items()},
        "flops": {name: size["flops"] for name, size in sizes.items()},
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown tables, naming the device, torch and the settings."""
    lines = [
        f"Device: {result['device']}; torch {result['torch']}; batch {result['batch']}, "
        f"{result['patch']}x{result['patch']} patches; median of {result['repeats']} after warm-up; "
        f"backbone {result['backbone']}.",
        "",
        "| training step | ms | x MEMD | target |",
        "| --- | --- | --- | --- |",
    ]
    for name, seconds in result["train_step_s"].items():
        target = f"<= {STEP_TARGET}" if name in ("stage2", "stage3") else ""
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {result['train_step_ratio'][name]:.2f} | {target} |")
    lines += ["", "| inference (batch 1) | ms | params | GFLOPs (MACs) |", "| --- | --- | --- | --- |"]
    for name, seconds in result["inference_s"].items():
        lines.append(
            f"| {name} | {seconds * 1e3:.1f} | {result['params'][name]:,} | {result['flops'][name] / 1e9:.2f} |"
        )
    lines += ["", f"ERL-Net / MEMD inference: {result['inference_ratio']:.2f}x (target <= {INFERENCE_TARGET})."]
    return "\n".join(lines)


def loader_benchmark(
    patch: int = 320, workers: tuple[int, ...] = (0, 2), images: int = 24, batch: int = 4, batches: int = 40
) -> dict[str, Any]:
    """Training patches per second through BasicSR's DataLoader, from image folders and from LMDB.

    Writes ``images`` random PNG pairs of 1.5x ``patch`` into a temporary folder, converts them with
    :func:`erl_plugin.data.convert.convert_dataset`, and times ``batches`` batches of
    :class:`~erl_plugin.data.DerainPairedDataset` random crops (after one warm-up epoch start)
    for each backend and worker count.
    """
    import cv2
    import numpy as np
    from basicsr.data import build_dataloader

    from erl_plugin.data import DerainPairedDataset
    from erl_plugin.data.convert import convert_dataset

    side = patch * 3 // 2
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        for kind in ("input", "target"):
            os.makedirs(os.path.join(folder, "src", kind))
        for index in range(images):
            for kind in ("input", "target"):
                image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                cv2.imwrite(os.path.join(folder, "src", kind, f"{index:04d}.png"), image)
        convert_dataset("pairs", os.path.join(folder, "src"), os.path.join(folder, "lmdb"), progress=False)
        roots = {
            "folder": {"dataroot_lq": f"{folder}/src/input", "dataroot_gt": f"{folder}/src/target"},
            "lmdb": {
                "dataroot_lq": f"{folder}/lmdb/lq.lmdb",
                "dataroot_gt": f"{folder}/lmdb/gt.lmdb",
                "io_backend": {"type": "lmdb"},
            },
        }
        for backend, root in roots.items():
            dataset = DerainPairedDataset({**root, "phase": "train", "gt_size": patch})
            for count in workers:
                options = {"phase": "train", "batch_size_per_gpu": batch, "num_worker_per_gpu": count}
                loader = build_dataloader(dataset, options, num_gpu=0, dist=False, sampler=None, seed=0)
                stream = iter(_endless(loader))
                next(stream)
                start = time.perf_counter()
                for _ in range(batches):
                    next(stream)
                rates[f"{backend}, {count} workers"] = batches * batch / (time.perf_counter() - start)
    return {"patch": patch, "batch": batch, "images": images, "patches_per_s": rates}


def _endless(loader: Any) -> Any:
    while True:
        yield from loader


def loader_markdown(result: dict[str, Any], device: str) -> str:
    """The loader rates as a Markdown table naming the settings."""
    lines = [
        f"DataLoader on {device}: {result['patch']}x{result['patch']} random crops from {result['images']} "
        f"PNG pairs of {result['patch'] * 3 // 2}x{result['patch'] * 3 // 2}, batch {result['batch']}.",
        "",
        "| source | patches/s |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in result["patches_per_s"].items()]
    return "\n".join(lines)
