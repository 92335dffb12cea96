"""How fast ERL-Net trains and derains, what it costs over MEMD, and whether the data path keeps up.

:func:`run_benchmark` measures, in one process so that ratios compare like with like:

- training images/s of every MA_D stage (teacher, stage1-3; MLGD, ``inject: decoder``) and of MEMD,
  in fp32 and in a fast setting (``train.amp`` + ``channels_last``, optionally ``compile``);
- our model classes against BasicSR's ``SRModel`` on the same MEMD in fp32 (DerainModel training
  MEMD, and ERLModel's stage1, which computes what MEMD computes), timed interleaved step by step so
  that the machine's drift hits both alike;
- inference milliseconds per image and per megapixel of MEMD and ERL-Net, at given sizes and batches;
- peak memory (CUDA: the allocator's peak per measurement; CPU: the process's peak RSS), parameters
  and FLOPs (MACs, :func:`~erl_plugin.archs.complexity.complexity`);
- DataLoader patches/s (:func:`loader_benchmark`) against the fastest training step's consumption.

Times are medians over repeats after warm-up. Targets: the ERL-Net issue's (stage II or III step at
most 1.35x a MEMD step, inference at most 1.6x MEMD), and on a GPU the speed issue's (fast setting at
least 1.5x fp32 imgs/s at 320x320 batch 16, ERL-Net at most 5 ms per 320x320 image at batch 1,
loader at least 2x consumption with 8 workers); our model class adds at most 5% over SRModel.
"""

import copy
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from basicsr.models.sr_model import SRModel
from torch import nn

from erl_plugin.archs import MEMD, ERLNet
from erl_plugin.archs.complexity import complexity
from erl_plugin.models import DerainModel, ERLModel
from erl_plugin.utils.speed import autocast, device_name, memory_format, prepare_network, resolve_precision

STEP_TARGET = 1.35
INFERENCE_TARGET = 1.6
OVERHEAD_TARGET = 1.05
AMP_SPEEDUP_TARGET = 1.5
LATENCY_TARGET_MS = 5.0
LOADER_TARGET = 2.0


@dataclass(frozen=True)
class Setting:
    """One way of running the networks: autocast precision, memory order, compile arguments."""

    name: str
    amp: str = "none"
    channels_last: bool = False
    compile: dict[str, Any] | None = None


def fast_setting(amp: str = "bf16", channels_last: bool = True, compile: dict[str, Any] | None = None) -> Setting:
    """The setting compared with fp32, named after what it turns on (``bf16 + channels_last``)."""
    parts = [amp] if amp not in ("none", "fp32") else ["fp32"]
    parts += ["channels_last"] * channels_last + ["compile"] * (compile is not None)
    return Setting(" + ".join(parts), amp, channels_last, compile)


FP32 = Setting("fp32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(run: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def median_seconds(run: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` calls of ``run`` after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        run()
    return statistics.median(_time_once(run, device) for _ in range(repeats))


@contextmanager
def peak_memory(device: torch.device, record: dict[str, Any]) -> Iterator[None]:
    """Record the peak memory of the block in MiB: CUDA allocator peak, or the process's peak RSS."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        record["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # Linux reports KiB; the high-water mark of the whole process so far
        record["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_options(
    backbone: dict[str, Any], folder: str, device: torch.device, model_type: str, setting: Setting
) -> dict[str, Any]:
    """Resolved options for building ``model_type`` (DerainModel, SRModel, ERLModel: MA_D + MLGD, one
    iteration per stage) on ``backbone`` in process, with checkpoints into ``folder``."""
    train: dict[str, Any] = {
        "optim_g": {"type": "Adam", "lr": 1e-4},
        "scheduler": {"type": "MultiStepLR", "milestones": [10**9], "gamma": 0.5},
        "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
        "amp": setting.amp,
    }
    if model_type == "ERLModel":
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
        "network_g": {"type": "ERLNet", "backbone": backbone} if model_type == "ERLModel" else dict(backbone),
        "path": {"models": folder, "training_states": folder},
        "train": train,
        "channels_last": setting.channels_last,
        "compile": setting.compile,
    }


def benchmark_networks(backbone: dict[str, Any]) -> dict[str, nn.Module]:
    """``MEMD`` and ``ERL-Net`` (ERLNet's defaults around ``backbone``), freshly initialised."""
    kwargs = {k: v for k, v in backbone.items() if k != "type"}
    return {"MEMD": MEMD(**kwargs), "ERL-Net": ERLNet(copy.deepcopy(backbone))}


def _stepper(model: Any, data: dict[str, torch.Tensor]) -> Callable[[], None]:
    model.feed_data(data)
    return lambda: model.optimize_parameters(1)


def erl_stages(model: ERLModel, data: dict[str, torch.Tensor]) -> Iterator[tuple[str, Callable[[], None]]]:
    """Each stage of ``model`` in turn, entered, with a function that runs one training step on ``data``."""
    for index, stage in enumerate(model.stages):
        model._enter_stage(index)
        yield stage.name, _stepper(model, data)


def train_benchmark(
    backbone: dict[str, Any],
    batch: int,
    patch: int,
    setting: Setting,
    device: torch.device,
    repeats: int = 5,
    warmup: int = 2,
    only: Collection[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Seconds per training step, images/s and peak memory of MEMD and each MA_D stage in ``setting``.

    Rows: ``MEMD (SRModel)`` (fp32 only: SRModel has no speed options), ``MEMD (DerainModel)``, and
    ERLModel's ``teacher``, ``stage1``, ``stage2``, ``stage3``; ``only`` keeps the rows it names. With
    warm-up, ``first_step_s`` is the first step's time (compilation and autotuning included).
    """
    torch.manual_seed(0)
    data = {key: torch.rand(batch, 3, patch, patch) for key in ("lq", "gt")}
    rows: dict[str, dict[str, float]] = {}

    def wanted(name: str) -> bool:
        return only is None or name in only

    def measure(name: str, step: Callable[[], None]) -> None:
        record: dict[str, float] = {}
        with peak_memory(device, record):
            if warmup:
                record["first_step_s"] = _time_once(step, device)
            seconds = median_seconds(step, repeats, max(warmup - 1, 0), device)
        rows[name] = {"step_s": seconds, "imgs_per_s": batch / seconds, **record}

    with tempfile.TemporaryDirectory() as folder:
        if setting == FP32 and wanted("MEMD (SRModel)"):
            measure("MEMD (SRModel)", _stepper(SRModel(model_options(backbone, folder, device, "SRModel", FP32)), data))
        if wanted("MEMD (DerainModel)"):
            derain = DerainModel(model_options(backbone, folder, device, "DerainModel", setting))
            measure("MEMD (DerainModel)", _stepper(derain, data))
            del derain
        erl = ERLModel(model_options(backbone, folder, device, "ERLModel", setting))
        for name, step in erl_stages(erl, data):
            if wanted(name):
                measure(name, step)
    return rows


def overhead_benchmark(
    backbone: dict[str, Any], batch: int, patch: int, device: torch.device, repeats: int = 15, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Our model classes against SRModel on the same MEMD and batch in fp32, timed step by step in turn.

    Each repeat times one step of each model, in an order that rotates from repeat to repeat.

    Returns:
        Per comparison (``DerainModel`` and ``ERLModel stage1``): our and SRModel's median seconds
        per step and their ratio.
    """
    torch.manual_seed(0)
    data = {key: torch.rand(batch, 3, patch, patch) for key in ("lq", "gt")}
    with tempfile.TemporaryDirectory() as folder:
        steps = {
            "SRModel": _stepper(SRModel(model_options(backbone, folder, device, "SRModel", FP32)), data),
            "DerainModel": _stepper(DerainModel(model_options(backbone, folder, device, "DerainModel", FP32)), data),
        }
        erl = ERLModel(model_options(backbone, folder, device, "ERLModel", FP32))
        erl._enter_stage([stage.name for stage in erl.stages].index("stage1"))
        steps["ERLModel stage1"] = _stepper(erl, data)
        for step in steps.values():
            for _ in range(warmup):
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        names = list(steps)
        for repeat in range(repeats):  # rotate the order, so that no class always runs first
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                times[name].append(_time_once(steps[name], device))
    reference = statistics.median(times["SRModel"])
    return {
        name: {
            "ours_s": statistics.median(times[name]),
            "srmodel_s": reference,
            "ratio": statistics.median(times[name]) / reference,
        }
        for name in ("DerainModel", "ERLModel stage1")
    }


def inference_benchmark(
    backbone: dict[str, Any],
    sizes: Sequence[tuple[int, int]],
    batches: Sequence[int],
    settings: Sequence[Setting],
    device: torch.device,
    repeats: int = 5,
    warmup: int = 2,
) -> list[dict[str, Any]]:
    """Milliseconds per image and per megapixel of MEMD and ERL-Net (eval, inference mode).

    Args:
        sizes: ``(width, height)`` of the images.
        batches: Batch sizes.

    Returns:
        One row per setting, model, size and batch.
    """
    torch.manual_seed(0)
    nets = {name: net.eval() for name, net in benchmark_networks(backbone).items()}
    rows = []
    for setting in settings:
        dtype = resolve_precision(setting.amp, device, "amp")
        for model, net in nets.items():
            prepared = prepare_network(copy.deepcopy(net), device, setting.channels_last, setting.compile)
            for width, height in sizes:
                for batch in batches:
                    x = memory_format(torch.rand(batch, 3, height, width, device=device), setting.channels_last)

                    def run(net: nn.Module = prepared, x: torch.Tensor = x, dtype: torch.dtype | None = dtype) -> None:
                        with torch.inference_mode(), autocast(device, dtype):
                            net(x)

                    record: dict[str, Any] = {}
                    with peak_memory(device, record):
                        seconds = median_seconds(run, repeats, warmup, device)
                    ms_per_image = seconds * 1e3 / batch
                    rows.append(
                        {
                            "setting": setting.name,
                            "model": model,
                            "width": width,
                            "height": height,
                            "batch": batch,
                            "ms_per_image": ms_per_image,
                            "ms_per_megapixel": ms_per_image / (width * height / 1e6),
                            **record,
                        }
                    )
    return rows


def run_benchmark(
    backbone: dict[str, Any],
    batch: int,
    patch: int,
    *,
    fast: Setting | None = None,
    sizes: Sequence[tuple[int, int]] = ((320, 320), (481, 321)),
    infer_batches: Sequence[int] = (1, 16),
    parts: Sequence[str] = ("train", "overhead", "inference", "loader"),
    loader_workers: Sequence[int] = (0, 2, 8),
    loader_images: int = 24,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every measurement of the module docstring on one device; returns a JSON-ready dict.

    Args:
        backbone: MEMD options, ``{type: MEMD, num_feat: ...}``.
        batch, patch: Training batch size and square crop side (also the loader's).
        fast: The setting compared with fp32; default bf16 + channels_last.
        sizes, infer_batches: Inference image sizes ``(width, height)`` and batch sizes.
        parts: Any of ``train``, ``overhead``, ``inference``, ``loader``.
        loader_workers, loader_images: DataLoader worker counts and the number of image pairs.
        repeats, warmup: Timed and untimed runs per measurement.
        device: ``cpu`` or ``cuda[:N]``.
        progress: Called with one line as each part starts and ends (default: nothing).
    """
    say = progress or (lambda line: None)
    dev = torch.device(device)
    fast = fast or fast_setting()
    settings = [FP32, fast]
    result: dict[str, Any] = {
        "device": device_name(dev),
        "torch": torch.__version__,
        "backbone": backbone,
        "batch": batch,
        "patch": patch,
        "repeats": repeats,
        "settings": [asdict(setting) for setting in settings],
    }
    networks = benchmark_networks(backbone)
    result["complexity"] = {name: complexity(net, (1, 3, 320, 320)) for name, net in networks.items()}
    started = time.perf_counter()

    def timed(part: str, run: Callable[[], Any]) -> Any:
        say(f"benchmark: {part} on {result['device']} ...")
        value = run()
        say(f"benchmark: {part} done ({time.perf_counter() - started:.0f} s so far)")
        return value

    if "train" in parts:
        result["train"] = {
            setting.name: timed(
                f"training, {setting.name}",
                lambda s=setting: train_benchmark(backbone, batch, patch, s, dev, repeats, warmup),
            )
            for setting in settings
        }
    if "overhead" in parts:
        result["overhead"] = timed(
            "overhead against SRModel",
            lambda: overhead_benchmark(backbone, batch, patch, dev, repeats=max(3 * repeats, 9)),
        )
    if "inference" in parts:
        result["inference"] = timed(
            "inference", lambda: inference_benchmark(backbone, sizes, infer_batches, settings, dev, repeats, warmup)
        )
    if "loader" in parts:
        result["loader"] = timed(
            "data loader",
            lambda: loader_benchmark(patch=patch, workers=tuple(loader_workers), images=loader_images, batch=batch),
        )
        if "train" in parts:
            name, rate = max(
                (
                    (f"{setting} {stage}", row["imgs_per_s"])
                    for setting, rows in result["train"].items()
                    for stage, row in rows.items()
                ),
                key=lambda item: item[1],
            )
            result["loader"]["consumption"] = {"step": name, "imgs_per_s": rate}
    return result


def _verdict(value: float, target: float, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "missed"


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown tables, naming the device, torch and the settings."""
    settings = [setting["name"] for setting in result["settings"]]
    fp32, fast = settings
    lines = [
        f"Device: {result['device']}; torch {result['torch']}; backbone {result['backbone']}; training batch "
        f"{result['batch']} of {result['patch']}x{result['patch']} crops; median of {result['repeats']} after "
        f"warm-up; settings: {fp32} and {fast}. Peak MiB: on CUDA the allocator's peak during each "
        "measurement; on the CPU the process's peak resident memory so far (it only grows).",
    ]
    if "train" in result:
        train = result["train"]
        lines += [
            "",
            f"| training step | {fp32} ms | {fp32} imgs/s | {fast} ms | {fast} imgs/s | speed-up | "
            f"x MEMD ({fp32}) | peak MiB ({fp32} / {fast}) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        memd = train[fp32]["MEMD (SRModel)"]["step_s"]
        for name, row in train[fp32].items():
            other = train[fast].get(name)
            speed = f"{other['imgs_per_s'] / row['imgs_per_s']:.2f}x" if other else ""
            target = f" (<= {STEP_TARGET})" if name in ("stage2", "stage3") else ""
            lines.append(
                f"| {name} | {row['step_s'] * 1e3:.1f} | {row['imgs_per_s']:.1f} | "
                + (f"{other['step_s'] * 1e3:.1f} | {other['imgs_per_s']:.1f} | " if other else "n/a | n/a | ")
                + f"{speed} | {row['step_s'] / memd:.2f}{target} | {row['peak_mib']:.0f} / "
                + (f"{other['peak_mib']:.0f} |" if other else "n/a |")
            )
    if "overhead" in result:
        lines += [
            "",
            f"| our class vs SRModel, MEMD, {fp32}, interleaved | ours ms | SRModel ms | ratio (target <= "
            f"{OVERHEAD_TARGET}) |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in result["overhead"].items():
            lines.append(
                f"| {name} | {row['ours_s'] * 1e3:.1f} | {row['srmodel_s'] * 1e3:.1f} | {row['ratio']:.3f} "
                f"({_verdict(row['ratio'], OVERHEAD_TARGET, True)}) |"
            )
    if "inference" in result:
        rows = result["inference"]
        lines += [
            "",
            "| inference | size (WxH) | batch | setting | ms/image | ms/megapixel | peak MiB | ERL-Net / MEMD |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        by_key = {(r["setting"], r["model"], r["width"], r["height"], r["batch"]): r for r in rows}
        for r in rows:
            ratio = ""
            if r["model"] == "ERL-Net":
                memd = by_key[(r["setting"], "MEMD", r["width"], r["height"], r["batch"])]["ms_per_image"]
                ratio = f"{r['ms_per_image'] / memd:.2f} (<= {INFERENCE_TARGET})"
            lines.append(
                f"| {r['model']} | {r['width']}x{r['height']} | {r['batch']} | {r['setting']} | "
                f"{r['ms_per_image']:.2f} | {r['ms_per_megapixel']:.1f} | {r['peak_mib']:.0f} | {ratio} |"
            )
    sizes = result["complexity"]
    lines += ["", "| network | params | GFLOPs (MACs) at 1x3x320x320 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {size['params']:,} | {size['flops'] / 1e9:.2f} |" for name, size in sizes.items()]
    if "loader" in result:
        lines += ["", loader_markdown(result["loader"], "the host CPU")]
    lines += ["", *target_lines(result)]
    return "\n".join(lines)


def target_lines(result: dict[str, Any]) -> list[str]:
    """One line per target: the measured value, the target, met or missed (GPU targets say so)."""
    fp32, fast = (setting["name"] for setting in result["settings"])
    gpu = "" if "CPU" not in result["device"] else " (a GPU target; measured on the CPU)"
    lines = ["Targets:"]
    if "train" in result:
        train = result["train"]
        memd = train[fp32]["MEMD (SRModel)"]["step_s"]
        for stage in ("stage2", "stage3"):
            ratio = train[fp32][stage]["step_s"] / memd
            lines.append(
                f"- {stage} step / MEMD step ({fp32}): {ratio:.2f}, target <= {STEP_TARGET}: "
                f"{_verdict(ratio, STEP_TARGET, True)}"
            )
        for name in ("MEMD (DerainModel)", "stage1", "stage2", "stage3"):
            speedup = train[fast][name]["imgs_per_s"] / train[fp32][name]["imgs_per_s"]
            lines.append(
                f"- {name} imgs/s, {fast} / {fp32}: {speedup:.2f}x, target >= {AMP_SPEEDUP_TARGET}x at "
                f"320x320 batch 16{gpu}: {_verdict(speedup, AMP_SPEEDUP_TARGET, False)}"
            )
    if "overhead" in result:
        for name, row in result["overhead"].items():
            lines.append(
                f"- {name} / SRModel step on MEMD ({fp32}): {row['ratio']:.3f}, target <= "
                f"{OVERHEAD_TARGET}: {_verdict(row['ratio'], OVERHEAD_TARGET, True)}"
            )
    if "inference" in result:
        for r in result["inference"]:
            if r["model"] == "ERL-Net" and (r["width"], r["height"], r["batch"]) == (320, 320, 1):
                lines.append(
                    f"- ERL-Net 320x320 batch 1, {r['setting']}: {r['ms_per_image']:.2f} ms, target <= "
                    f"{LATENCY_TARGET_MS} ms{gpu}: {_verdict(r['ms_per_image'], LATENCY_TARGET_MS, True)}"
                )
    consumption = (result.get("loader") or {}).get("consumption")
    if consumption:
        for name, rate in result["loader"]["patches_per_s"].items():
            if name.startswith(("lmdb", "on the fly")):
                ratio = rate / consumption["imgs_per_s"]
                lines.append(
                    f"- loader {name} / training consumption ({consumption['step']}, "
                    f"{consumption['imgs_per_s']:.1f} imgs/s): {ratio:.2f}x, target >= {LOADER_TARGET}x "
                    f"with 8 workers{gpu}: {_verdict(ratio, LOADER_TARGET, False)}"
                )
    return lines


def loader_benchmark(
    patch: int = 320, workers: tuple[int, ...] = (0, 2), images: int = 24, batch: int = 4, batches: int = 40
) -> dict[str, Any]:
    """Training patches per second through BasicSR's DataLoader: image folders, LMDB, and rain on the fly.

    Writes ``images`` random PNG pairs of 1.5x ``patch`` into a temporary folder, converts them with
    :func:`erl_plugin.data.convert.convert_dataset`, and times ``batches`` batches of
    :class:`~erl_plugin.data.DerainPairedDataset` random crops (after one warm-up batch) for each
    backend and worker count, with persistent workers; then the same for
    :class:`~erl_plugin.data.SyntheticRainDataset` (the ``wide`` domain over scikit-image's training
    photos, scale 0.5-1), which renders every pair.
    """
    import cv2
    import numpy as np
    from basicsr.data import build_dataloader

    from erl_plugin.data import DerainPairedDataset, SyntheticRainDataset
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
        datasets = {
            backend: DerainPairedDataset({**root, "phase": "train", "gt_size": patch})
            for backend, root in roots.items()
        }
        datasets["on the fly (wide rain)"] = SyntheticRainDataset(
            {"phase": "train", "gt_size": patch, "rescale": [0.5, 1.0], "num_samples": 100000}
        )
        for backend, dataset in datasets.items():
            for count in workers:
                options = {
                    "phase": "train",
                    "batch_size_per_gpu": batch,
                    "num_worker_per_gpu": count,
                    "persistent_workers": count > 0,  # else workers restart at every pass over the images
                }
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
        "| source | patches/s | per worker |",
        "| --- | --- | --- |",
    ]
    for name, rate in result["patches_per_s"].items():
        workers = int(name.rsplit(", ", 1)[1].split()[0])
        lines.append(f"| {name} | {rate:.1f} | {rate / max(workers, 1):.1f} |")
    return "\n".join(lines)
