"""Validation under DDP, sharded over the ranks.

BasicSR 1.4.2's ``SRModel.dist_validation`` validates on rank 0 only while the other ranks go on to
the next training step and wait in its gradient all-reduce: a validation longer than the process
group's timeout kills the run. Here rank ``r`` derains images ``r, r + W, r + 2W, ...``, the metric
sums are all-reduced (which every rank reaches after its share), and rank 0 logs the means and keeps
the best values, as BasicSR does. Metrics are computed per image, so the means equal those of a
single process up to the order of a float sum.
"""

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from basicsr.metrics import calculate_metric
from basicsr.utils import imwrite, tensor2img
from torch.utils.data import DataLoader


def first_validation_phase(opt: Mapping[str, Any]) -> str | None:
    """The first ``datasets.val*`` phase: the set PlateauLR follows and the headroom is measured on (None: none)."""
    return next((str(phase) for phase in opt.get("datasets") or {} if str(phase).startswith("val")), None)


def sharded_validation(model: Any, dataloader: DataLoader, current_iter: int, tb_logger: Any, save_img: bool) -> None:
    """``dist_validation`` for BasicSR's ``SRModel`` and its subclasses; every rank must call it."""
    opt = model.opt
    dataset = dataloader.dataset
    dataset_name = dataset.opt["name"]
    metrics = opt["val"].get("metrics") or {}
    if metrics:
        model._initialize_best_metric_results(dataset_name)
    sums = torch.zeros(len(metrics), dtype=torch.float64)
    for index in range(opt["rank"], len(dataset), opt["world_size"]):
        data = dataloader.collate_fn([dataset[index]])
        image_name = os.path.splitext(os.path.basename(data["lq_path"][0]))[0]
        model.feed_data(data)
        model.test()
        visuals = model.get_current_visuals()
        metric_data = {"img": tensor2img([visuals["result"]])}
        if "gt" in visuals:
            metric_data["img2"] = tensor2img([visuals["gt"]])
            del model.gt
        del model.lq, model.output
        if save_img:
            imwrite(
                metric_data["img"],
                os.path.join(opt["path"]["visualization"], image_name, f"{image_name}_{current_iter}.png"),
            )
        for position, metric_opt in enumerate(metrics.values()):
            sums[position] += float(calculate_metric(metric_data, metric_opt))
    if not metrics:
        dist.barrier()
        return
    reduced = sums.to(model.device)
    dist.all_reduce(reduced)
    model.metric_results = {name: reduced[i].item() / len(dataset) for i, name in enumerate(metrics)}
    for name, value in model.metric_results.items():
        model._update_best_metric_result(dataset_name, name, value, current_iter)
    if opt["rank"] == 0:
        model._log_validation_metric_values(current_iter, dataset_name, tb_logger)
