"""What the plugin's models add to a BasicSR model so that training survives kills, bad files and DDP on CPU.

:class:`ReliableTraining` is mixed in first: ``DerainModel(ReliableTraining, SRModel)``, and ERLModel
through it. ``erl-train`` trains BasicSR's own model types (``SRModel``, ...) through
:func:`with_reliable_training`, a subclass built at start-up: BasicSR's classes stay as upstream.

- networks are written atomically (temporary file, fsync, rename) and the SHA-256 of each is recorded
  in the training state written with it, which resume checks;
- networks are read with ``weights_only=True``, refusing pickled code and non-finite tensors, with a
  message naming the file;
- a training state holds, beyond BasicSR's, the RNG states of every rank, the options it must be
  resumed with and, under ``erl-train``, the data position (:attr:`ReliableTraining.train_sampler`);
  old ones are pruned by ``logger.keep_last`` (:func:`erl_plugin.utils.resume.write_training_state`);
- validation leaves the training RNG streams where it found them, so its frequency never changes
  training; under DDP it is sharded over the ranks (:mod:`erl_plugin.models.validation`);
- DDP on the CPU wraps without ``device_ids`` (BasicSR passes the current CUDA device).
"""

import os
from collections.abc import Mapping
from typing import Any

import torch
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from erl_plugin.models.validation import sharded_validation
from erl_plugin.utils.checkpoint import atomic_save, load_fitting, load_weights
from erl_plugin.utils.resume import (
    ResumableSampler,
    capture_rng,
    options_fingerprint,
    restore_rng,
    write_training_state,
)


def cpu_ddp(net: nn.Module, opt: Mapping[str, Any], device: torch.device) -> DistributedDataParallel:
    """``net`` on ``device`` wrapped in DDP without ``device_ids`` (BasicSR passes the current CUDA device,
    which does not exist on a CPU)."""
    return DistributedDataParallel(net.to(device), find_unused_parameters=opt.get("find_unused_parameters", False))


class ReliableTraining(BaseModel):
    """Atomic, checked checkpoints, exact training states and RNG-neutral validation for a BasicSR model."""

    train_sampler: ResumableSampler | None = None
    """The training data's sampler, set by ``erl-train``'s pipeline: its position goes into each training
    state, so that a resumed run continues at the next batch. None under BasicSR's own train.py."""

    def __init__(self, opt: dict[str, Any]) -> None:
        self.remember_options(opt)
        super().__init__(opt)

    def remember_options(self, opt: dict[str, Any]) -> None:
        """Record what a training state must be resumed with, before BasicSR pops the optimizer types out of
        ``opt``; a model that skips this class's ``__init__`` calls it first."""
        self.options_fingerprint = options_fingerprint(opt)
        self.written_networks: dict[int, dict[str, str]] = {}  # iteration -> {file name: SHA-256}

    def model_to_device(self, net: nn.Module) -> nn.Module:
        """BasicSR's, except that DDP on the CPU wraps without ``device_ids``."""
        if self.opt["dist"] and self.device.type == "cpu":
            return cpu_ddp(net, self.opt, self.device)
        return super().model_to_device(net)

    @master_only
    def save_network(
        self, net: nn.Module | list[nn.Module], net_label: str, current_iter: int | str, param_key: Any = "params"
    ) -> None:
        """Write ``<net_label>_<iter>.pth`` atomically, as BasicSR lays it out, and remember its checksum."""
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError(f"save_network: {len(nets)} networks but {len(keys)} param keys")
        state = {
            key: {
                name.removeprefix("module."): value.cpu() for name, value in self.get_bare_model(n).state_dict().items()
            }
            for n, key in zip(nets, keys, strict=True)
        }
        name = f"{net_label}_{'latest' if current_iter == -1 else current_iter}.pth"
        digest = atomic_save(state, os.path.join(self.opt["path"]["models"], name))
        if isinstance(current_iter, int) and current_iter >= 0:  # what the training state will check on resume
            self.written_networks.setdefault(current_iter, {})[name] = digest

    def load_network(self, net: nn.Module, load_path: str, strict: bool = True, param_key: str = "params") -> None:
        """Load ``load_path`` safely into ``net``; a file that does not fit is named with the reason."""
        net = self.get_bare_model(net)
        loaded = load_weights(load_path, param_key)
        logger = get_root_logger()
        logger.info(f"Loading {type(net).__name__} model from {load_path}, with param key: [{param_key}].")
        note = net.partial_load_note(loaded) if hasattr(net, "partial_load_note") else None
        if note is not None:  # a correct partial load: one line instead of a warning per key
            logger.info(f"{type(net).__name__}: {note}")
        else:
            self._print_different_keys_loading(net, loaded, strict)
        try:
            load_fitting(net, loaded, strict=strict)
        except ValueError as error:
            raise ValueError(f"{load_path} does not fit {type(net).__name__}: {error}") from None

    def validation(self, dataloader: Any, current_iter: int, tb_logger: Any, save_img: bool = False) -> None:
        """BasicSR's validation, with the training RNG streams restored afterwards."""
        rng = capture_rng()
        try:
            super().validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            restore_rng(rng)

    def dist_validation(self, dataloader: Any, current_iter: int, tb_logger: Any, save_img: bool) -> None:
        """Validation sharded over the ranks (every rank must call it)."""
        sharded_validation(self, dataloader, current_iter, tb_logger, save_img)

    def training_state_extras(self) -> dict[str, Any]:
        """What a model adds to its training state (DerainModel: the fp16 loss scale; ERLModel: the stage)."""
        return {}

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """Write ``<iter>.state`` (rank 0) with the networks just written; every rank must call it."""
        write_training_state(
            self,
            epoch,
            current_iter,
            files=self.written_networks.pop(current_iter, {}),
            data=self.train_sampler.position(epoch, current_iter) if self.train_sampler is not None else None,
            extra=self.training_state_extras(),
        )


def with_reliable_training(model_class: type[BaseModel]) -> type[BaseModel]:
    """``model_class`` itself when it has :class:`ReliableTraining`, else a subclass that adds it."""
    if issubclass(model_class, ReliableTraining):
        return model_class
    return type(model_class.__name__, (ReliableTraining, model_class), {"__module__": model_class.__module__})
