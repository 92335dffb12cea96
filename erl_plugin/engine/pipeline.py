"""``erl-train`` and ``erl-test``: the plugin's own training and test loops, built from BasicSR's parts.

BasicSR's ``train_pipeline`` and ``test_pipeline`` (basicsr 1.4.2) are the reference for behaviour: the
same folders, log lines, loop, saves and validations, so a BasicSR user reads the run as before. What
differs is passed in, not patched into BasicSR:

- the options arrive checked and resolved (:mod:`erl_plugin.engine.entry`), never re-read from a file;
  the copy in the experiment folder is the text given, headed by the command as BasicSR's is;
- the model class has :class:`~erl_plugin.models.reliable.ReliableTraining` (BasicSR's own model types
  get it through a subclass built here): atomic, checked checkpoints, exact training states,
  RNG-neutral and sharded validation;
- the training data are seeded per sample and the sampler resumes at the next batch
  (:mod:`erl_plugin.utils.resume`), so a run resumed after a kill repeats the uninterrupted one bitwise;
- ``--launcher pytorch`` starts gloo process groups on a machine without CUDA;
- the first step of a run is logged as well as every ``print_freq``-th, so a long run shows its pace at once;
- each run logs to its own file, also when a process runs several (a notebook, the tests).
"""

import contextlib
import copy
import datetime
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.train import init_tb_loggers
from basicsr.utils import (
    AvgTimer,
    MessageLogger,
    get_env_info,
    get_root_logger,
    get_time_str,
    make_exp_dirs,
    mkdir_and_rename,
    set_random_seed,
)
from basicsr.utils.dist_util import get_dist_info, init_dist
from basicsr.utils.options import dict2str
from basicsr.utils.registry import MODEL_REGISTRY

from erl_plugin.models.reliable import ReliableTraining, with_reliable_training
from erl_plugin.utils.outputs import write_text
from erl_plugin.utils.resume import create_train_val_dataloader, load_resume_state


@dataclass(frozen=True)
class RunRequest:
    """What the command line adds to the options: BasicSR's flags, the root, and the text to keep."""

    launcher: str = "none"
    auto_resume: bool = False
    debug: bool = False
    root: str = "."
    options_file: str = "options.yml"
    options_text: str = ""
    command: str = ""


def start_processes(opt: dict[str, Any], launcher: str) -> None:
    """Join the launcher's process group (gloo where there is no CUDA) and record rank and world size."""
    opt["dist"] = launcher != "none"
    if launcher == "none":
        print("Disable distributed.", flush=True)
    elif launcher == "pytorch" and not torch.cuda.is_available():
        if mp.get_start_method(allow_none=True) is None:
            mp.set_start_method("spawn")  # as BasicSR's init_dist
        dist.init_process_group(backend="gloo")
    elif launcher == "slurm":
        init_dist(launcher, **(opt.get("dist_params") or {}))
    else:
        init_dist(launcher)
    opt["rank"], opt["world_size"] = get_dist_info()


def resolve_options(opt: dict[str, Any], request: RunRequest, is_train: bool) -> dict[str, Any]:
    """Complete checked options as BasicSR's ``parse_options`` does: processes, seed, flags, phases, folders."""
    start_processes(opt, request.launcher)
    if opt.get("manual_seed") is None:
        opt["manual_seed"] = random.randint(1, 10000)
    set_random_seed(opt["manual_seed"] + opt["rank"])
    opt["auto_resume"], opt["is_train"] = request.auto_resume, is_train
    if request.debug and not opt["name"].startswith("debug"):
        opt["name"] = f"debug_{opt['name']}"
    if opt.get("num_gpu", "auto") == "auto":
        opt["num_gpu"] = torch.cuda.device_count()
    for phase, dataset in opt["datasets"].items():
        dataset["phase"] = phase.split("_")[0]
        if "scale" in opt:
            dataset["scale"] = opt["scale"]
        for key in ("dataroot_gt", "dataroot_lq"):
            if dataset.get(key) is not None:
                dataset[key] = os.path.expanduser(dataset[key])
    paths = opt.setdefault("path", {})
    for key, value in paths.items():
        if value is not None and ("resume_state" in key or "pretrain_network" in key):
            paths[key] = os.path.expanduser(value)
    root = os.path.abspath(request.root)
    opt["root_path"] = root
    if is_train:
        experiments_root = os.path.join(root, "experiments", opt["name"])
        paths.update(
            experiments_root=experiments_root,
            models=os.path.join(experiments_root, "models"),
            training_states=os.path.join(experiments_root, "training_states"),
            log=experiments_root,
            visualization=os.path.join(experiments_root, "visualization"),
        )
        if "debug" in opt["name"]:  # BasicSR's debug mode: frequent logs, saves and validations
            if "val" in opt:
                opt["val"]["val_freq"] = 8
            opt["logger"].update(print_freq=1, save_checkpoint_freq=8)
    else:
        results_root = os.path.join(root, "results", opt["name"])
        paths.update(
            results_root=results_root, log=results_root, visualization=os.path.join(results_root, "visualization")
        )
    return opt


def build_model(opt: Mapping[str, Any]) -> ReliableTraining:
    """The model of ``opt["model_type"]`` with :class:`ReliableTraining`, on its own copy of the options."""
    model_class = with_reliable_training(MODEL_REGISTRY.get(opt["model_type"]))
    model = model_class(copy.deepcopy(dict(opt)))
    get_root_logger().info(f"Model [{type(model).__name__}] is created.")
    return model


def keep_options(request: RunRequest, folder: str) -> None:
    """Copy the options as given into ``folder``, headed as BasicSR heads its copy (time and command)."""
    header = f"# GENERATE TIME: {time.asctime()}\n# CMD:\n# {request.command}\n\n"
    write_text(os.path.join(folder, os.path.basename(request.options_file)), header + request.options_text)


@contextlib.contextmanager
def run_log(opt: Mapping[str, Any], kind: str) -> Iterator[logging.Logger]:
    """BasicSR's root logger writing ``<kind>_<name>_<time>.log`` into the run's folder for the length of the
    run, opened with the environment and the options.

    BasicSR sets its logger up once per process, with the first run's file; here each run of the process
    (a second ``erl_plugin.train.main`` call, a notebook) gets its own file, closed when it ends.
    """
    log_file = os.path.join(opt["path"]["log"], f"{kind}_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name="basicsr", log_level=logging.INFO, log_file=log_file)
    if opt["rank"] == 0 and not any(_writes_to(handler, log_file) for handler in logger.handlers):
        handler = logging.FileHandler(log_file, "w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    try:
        yield logger
    finally:
        for handler in [h for h in logger.handlers if _writes_to(h, log_file)]:
            logger.removeHandler(handler)
            handler.close()


def _writes_to(handler: logging.Handler, path: str) -> bool:
    return isinstance(handler, logging.FileHandler) and handler.baseFilename == os.path.abspath(path)


def train_pipeline(opt: dict[str, Any], request: RunRequest) -> None:
    """Train from checked options: BasicSR's loop with exact resume, checked checkpoints and sharded validation.

    Raises:
        erl_plugin.utils.resume.ResumeError: the state to resume from is broken or was written by other options.
        erl_plugin.models.schedulers.PlateauReached: ``PlateauLR`` stopped training (the latest networks are
            written).
    """
    opt = resolve_options(opt, request, is_train=True)
    try:
        resume_state = prepare_experiment(opt, request)
        with run_log(opt, "train") as logger:
            _train_loop(opt, resume_state, logger)
    finally:
        end_processes()


def end_processes() -> None:
    """Leave the process group, if any: its threads must stop before the interpreter does."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def prepare_experiment(opt: dict[str, Any], request: RunRequest) -> dict[str, Any] | None:
    """Load the state to resume from (checked), or make the experiment's folders; keep the options there."""
    torch.backends.cudnn.benchmark = True
    resume_state = load_resume_state(opt)
    if resume_state is None:
        make_exp_dirs(opt)
        if opt["logger"].get("use_tb_logger") and "debug" not in opt["name"] and opt["rank"] == 0:
            mkdir_and_rename(os.path.join(opt["root_path"], "tb_logger", opt["name"]))
    if opt["rank"] == 0:
        keep_options(request, opt["path"]["experiments_root"])
    return resume_state


def _train_loop(opt: dict[str, Any], resume_state: Mapping[str, Any] | None, logger: logging.Logger) -> None:
    tb_logger = init_tb_loggers(opt)
    train_loader, train_sampler, val_loaders, total_epochs, total_iters = create_train_val_dataloader(
        opt, logger, resume_state
    )
    model = build_model(opt)
    model.train_sampler = train_sampler
    start_epoch = current_iter = 0
    if resume_state is not None:
        model.resume_training(resume_state)
        logger.info(f"Resuming training from epoch: {resume_state['epoch']}, iter: {resume_state['iter']}.")
        start_epoch, current_iter = resume_state["epoch"], resume_state["iter"]
    msg_logger = MessageLogger(opt, current_iter, tb_logger)
    prefetcher = _prefetcher(opt, train_loader, logger)

    logger.info(f"Start training from epoch: {start_epoch}, iter: {current_iter}")
    first_iter = current_iter + 1
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    val_opt = opt.get("val")
    epoch = start_epoch
    for epoch in range(start_epoch, total_epochs + 1):
        train_sampler.set_epoch(epoch)
        prefetcher.reset()
        train_data = prefetcher.next()
        while train_data is not None:
            data_timer.record()
            current_iter += 1
            if current_iter > total_iters:
                break
            model.update_learning_rate(current_iter, warmup_iter=opt["train"].get("warmup_iter", -1))
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            iter_timer.record()
            if current_iter == 1:
                msg_logger.reset_start_time()  # a more accurate ETA (not when resuming)
            # The run's first step is logged too: a long run shows its pace at once, not after print_freq steps.
            if current_iter % opt["logger"]["print_freq"] == 0 or current_iter == first_iter:
                log_vars = {"epoch": epoch, "iter": current_iter, "lrs": model.get_current_learning_rate()}
                log_vars.update(time=iter_timer.get_avg_time(), data_time=data_timer.get_avg_time())
                log_vars.update(model.get_current_log())
                msg_logger(log_vars)
            if current_iter % opt["logger"]["save_checkpoint_freq"] == 0:
                logger.info("Saving models and training states.")
                model.save(epoch, current_iter)
            if val_opt is not None and current_iter % val_opt["val_freq"] == 0:
                for val_loader in val_loaders:
                    model.validation(val_loader, current_iter, tb_logger, val_opt["save_img"])
            data_timer.start()
            iter_timer.start()
            train_data = prefetcher.next()

    logger.info(f"End of training. Time consumed: {datetime.timedelta(seconds=int(time.time() - start_time))}")
    logger.info("Save the latest model.")
    model.save(epoch=-1, current_iter=-1)
    if val_opt is not None:
        for val_loader in val_loaders:
            model.validation(val_loader, current_iter, tb_logger, val_opt["save_img"])
    if tb_logger:
        tb_logger.close()


def _prefetcher(opt: Mapping[str, Any], train_loader: Any, logger: logging.Logger) -> CPUPrefetcher | CUDAPrefetcher:
    """BasicSR's prefetcher of ``datasets.train.prefetch_mode`` (None or cpu, or cuda with pin_memory)."""
    mode = opt["datasets"]["train"].get("prefetch_mode")
    if mode in (None, "cpu"):
        return CPUPrefetcher(train_loader)
    logger.info(f"Use {mode} prefetch dataloader")
    return CUDAPrefetcher(train_loader, opt)


def test_pipeline(opt: dict[str, Any], request: RunRequest) -> None:
    """Test from checked options: each ``datasets`` entry validated in name order, as BasicSR's test.py does."""
    opt = resolve_options(opt, request, is_train=False)
    try:
        torch.backends.cudnn.benchmark = True
        make_exp_dirs(opt)
        with run_log(opt, "test") as logger:
            _test_loop(opt, logger)
    finally:
        end_processes()


def _test_loop(opt: dict[str, Any], logger: logging.Logger) -> None:
    test_loaders = []
    for _, dataset_opt in sorted(opt["datasets"].items()):
        test_set = build_dataset(dataset_opt)
        test_loaders.append(
            build_dataloader(test_set, dataset_opt, num_gpu=opt["num_gpu"], dist=opt["dist"], seed=opt["manual_seed"])
        )
        logger.info(f"Number of test images in {dataset_opt['name']}: {len(test_set)}")
    model = build_model(opt)
    for test_loader in test_loaders:
        logger.info(f"Testing {test_loader.dataset.opt['name']}...")
        model.validation(test_loader, current_iter=opt["name"], tb_logger=None, save_img=opt["val"]["save_img"])
