"""Exact resume for BasicSR's train loop: RNG streams, data order, checked training states.

BasicSR 1.4.2 restarts the interrupted epoch from its first batch and saves no RNG state, so a
resumed run sees other batches than an uninterrupted one. ``erl-train``'s pipeline
(:mod:`erl_plugin.engine.pipeline`) builds its loop from the pieces below:

- every training sample is augmented under its own seed, drawn from ``manual_seed``, the epoch and
  its position in the epoch's global order (:class:`SeededDataset`): the data do not depend on the
  number of loader workers, on the process's RNG, nor on where a run was resumed;
- :class:`ResumableSampler` is BasicSR's ``EnlargedSampler`` (same order) that can start an epoch
  at a given batch and restores the RNG state of the interrupted run just before its first batch;
- a training state (:func:`write_training_state`, written by the plugin's models) adds to BasicSR's the
  RNG states of python, numpy and torch of every rank, the data position, what the options build
  (:func:`options_fingerprint`), and the SHA-256 of the network files written with it; it is written
  atomically and old ones are pruned by ``logger.keep_last``;
- :func:`load_resume_state` takes the newest state whose files are intact, falling back to the
  previous one with a warning, and refuses, before any file is touched, a state written by other
  options. BasicSR's own train.py uses it too (it loads states on the CPU, which upstream cannot).
"""

import copy
import math
import os
import random
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import check_resume, get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from torch.utils.data import Dataset

from erl_plugin.utils.checkpoint import (
    CheckpointError,
    atomic_save,
    checkpoint_iterations,
    file_digest,
    load_weights,
    prune_checkpoints,
    safe_load,
)

STATE_KEYS = ("epoch", "iter", "optimizers", "schedulers")


class ResumeError(ValueError):
    """A training state that this run must not resume from; the message names the file and why."""


# ------------------------------------------------------------------------------------------- RNG
def capture_rng(cuda: bool = True) -> dict[str, Any]:
    """The RNG states of python, numpy and torch (and CUDA, when initialised) as plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the RNG states captured by :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(opt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective call under DDP)."""
    state = capture_rng()
    if not opt.get("dist"):
        return [state]
    states: list[Any] = [None] * opt["world_size"]
    dist.all_gather_object(states, state)
    return states


# ------------------------------------------------------------------------------------------ data
def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of the global order of ``epoch``."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, position]).generate_state(1)[0])


class SeededIndex(int):
    """A dataset index that carries the seed its sample is augmented with."""

    seed: int

    def __new__(cls, index: int, seed: int) -> "SeededIndex":
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self) -> tuple[type, tuple[int, int]]:  # loader workers receive indices pickled
        return SeededIndex, (int(self), self.seed)


class SeededDataset(Dataset):
    """Reads ``dataset[index]`` with python, numpy and torch (CPU) seeded from a :class:`SeededIndex`.

    The caller's RNG states are restored afterwards, so reading data never moves the streams the
    training step draws from.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if not isinstance(index, SeededIndex):
            return self.dataset[index]
        saved = capture_rng(cuda=False)
        random.seed(index.seed)
        np.random.seed(index.seed)
        torch.default_generator.manual_seed(index.seed)
        try:
            return self.dataset[index]  # still a SeededIndex: a dataset may draw from its seed itself
        finally:
            restore_rng(saved)


class ResumableSampler(EnlargedSampler):
    """BasicSR's ``EnlargedSampler`` that yields :class:`SeededIndex` and can resume mid-epoch.

    Epoch ``e`` covers iterations ``iter_offset + e * batches_per_epoch + 1`` onwards, as in
    BasicSR's loop, which runs every epoch to its last full batch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, ratio: int, seed: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas, rank, ratio)
        self.seed = seed
        self.batch_size = batch_size
        self.batches_per_epoch = self.num_samples // batch_size
        self.iter_offset = 0
        # Where a resumed run continues: (epoch, batches to skip, RNG states), armed by set_epoch(epoch) so
        # that only the epoch's own iterator uses it (BasicSR's prefetcher makes one more, at start-up).
        self._resume_at: tuple[int, int, dict[str, Any] | None] | None = None
        self._armed: tuple[int, dict[str, Any] | None] | None = None

    def layout(self) -> dict[str, int]:
        """What fixes the data order: dataset length, processes, batch size, batches per epoch."""
        return {
            "dataset_len": len(self.dataset),
            "world_size": self.num_replicas,
            "batch_size": self.batch_size,
            "batches_per_epoch": self.batches_per_epoch,
        }

    def position(self, epoch: int, current_iter: int) -> dict[str, int]:
        """The data position after ``current_iter``, for a training state."""
        batch = current_iter - self.iter_offset - epoch * self.batches_per_epoch
        return {"epoch": epoch, "batch": batch, "iter_offset": self.iter_offset, **self.layout()}

    def resume(self, state: Mapping[str, Any]) -> tuple[bool, str]:
        """Continue the run of ``state`` at its next batch; return whether that is exact, and how."""
        data, states = state.get("data"), state.get("rng")
        epoch, current_iter = state["epoch"], state["iter"]
        rng = states[self.rank] if states is not None and len(states) == self.num_replicas else None
        if data is not None and {k: data.get(k) for k in self.layout()} == self.layout():
            batch = current_iter - data["iter_offset"] - epoch * self.batches_per_epoch
            if batch == data["batch"] and 0 <= batch <= self.batches_per_epoch and rng is not None:
                self.iter_offset = data["iter_offset"]
                self._resume_at = (epoch, batch, rng)
                return True, f"epoch {epoch} continues after its batch {batch} with the interrupted run's RNG states"
        self.iter_offset = current_iter - epoch * self.batches_per_epoch
        self._resume_at = (epoch, 0, rng)
        recorded = {k: data.get(k) for k in self.layout()} if data else "not recorded"
        return False, (
            f"the data layout differs from the interrupted run's (now {self.layout()}, then {recorded}) or its "
            f"RNG states are missing: epoch {epoch} restarts from its first batch and the run will not "
            "repeat the uninterrupted one exactly"
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self._resume_at is not None and self._resume_at[0] == epoch:
            self._armed, self._resume_at = self._resume_at[1:], None

    def __iter__(self) -> Iterator[SeededIndex]:  # a generator: its body, RNG restore included, runs at the first batch
        armed, self._armed = self._armed, None
        skip = armed[0] * self.batch_size if armed else 0
        if armed and armed[1] is not None:
            restore_rng(armed[1])
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield SeededIndex(index, sample_seed(self.seed, self.epoch, position * self.num_replicas + self.rank))


def create_train_val_dataloader(opt: dict[str, Any], logger: Any, resume_state: Mapping[str, Any] | None) -> tuple:
    """``basicsr.train.create_train_val_dataloader`` with seeded training data that resumes at the batch after
    ``resume_state``'s (when given); returns the same five values."""
    logger.info(f"torch CPU threads: {torch.get_num_threads()} per process")
    train_loader = train_sampler = None
    val_loaders = []
    total_epochs = total_iters = 0
    for phase, dataset_opt in opt["datasets"].items():
        if phase == "train":
            ratio = dataset_opt.get("dataset_enlarge_ratio", 1)
            train_set = SeededDataset(build_dataset(dataset_opt))
            multiplier = 1 if opt["dist"] or opt["num_gpu"] == 0 else opt["num_gpu"]
            batch_size = dataset_opt["batch_size_per_gpu"] * multiplier
            train_sampler = ResumableSampler(
                train_set, opt["world_size"], opt["rank"], ratio, opt["manual_seed"], batch_size
            )
            if train_sampler.batches_per_epoch == 0:
                raise ValueError(
                    f"datasets.train: {len(train_set)} images x dataset_enlarge_ratio {ratio} give no full batch of "
                    f"{batch_size} per process; raise dataset_enlarge_ratio"
                )
            train_loader = build_dataloader(
                train_set,
                dataset_opt,
                num_gpu=opt["num_gpu"],
                dist=opt["dist"],
                sampler=train_sampler,
                seed=opt["manual_seed"],
            )
            total_iters = int(opt["train"]["total_iter"])
            logger.info(
                "Training statistics:"
                f"\n\tNumber of train images: {len(train_set)}"
                f"\n\tDataset enlarge ratio: {ratio}"
                f"\n\tBatch size per gpu: {dataset_opt['batch_size_per_gpu']}"
                f"\n\tWorld size (gpu number): {opt['world_size']}"
                f"\n\tRequire iter number per epoch: {train_sampler.batches_per_epoch}"
                f"\n\tTotal epochs: {math.ceil(total_iters / train_sampler.batches_per_epoch)}; iters: {total_iters}."
            )
        elif phase.split("_")[0] == "val":
            val_set = build_dataset(dataset_opt)
            val_loaders.append(
                build_dataloader(
                    val_set, dataset_opt, num_gpu=opt["num_gpu"], dist=opt["dist"], seed=opt["manual_seed"]
                )
            )
            logger.info(f"Number of val images/folders in {dataset_opt['name']}: {len(val_set)}")
        else:
            raise ValueError(f"datasets.{phase}: phase not recognised (train, val, val_<n>)")
    if resume_state is not None and train_sampler is not None:
        exact, how = train_sampler.resume(resume_state)
        (logger.info if exact else logger.warning)(f"Resume from iteration {resume_state['iter']}: {how}")
    if train_sampler is not None:
        total_epochs = math.ceil(max(total_iters - train_sampler.iter_offset, 0) / train_sampler.batches_per_epoch)
    # BasicSR's loop runs epochs up to total_epochs inclusive and stops at total_iter.
    return train_loader, train_sampler, val_loaders, total_epochs, total_iters


# -------------------------------------------------------------------------------- state files
def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


STATE_HELD = (
    "train.scheduler",
    "train.stage_options",
    "train.teacher_mode",
    "train.teacher_init",
    "train.balance_feature_loss",
)
"""Options whose values a resumed run takes from the training state (optimizer and scheduler states),
not from the options; with every ``train.optim_*``, ``model_type`` and ``network_*`` they must
be what wrote the state. (The stages are the model's to check: ``ERLModel.check_resume_state``. The
seed is not among them: BasicSR draws one when the options give none, and a given one seeds the data
as written.)"""

FINGERPRINT_VERSION = 2  # version 1 (no "version" entry) recorded model_type and network_* only


def _option(opt: Mapping[str, Any], dotted: str) -> Any:
    node: Any = opt
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def options_fingerprint(opt: Mapping[str, Any]) -> dict[str, Any]:
    """What a training state must agree with to be resumed: the model type, every ``network_*``, every
    ``train.optim_*`` and :data:`STATE_HELD` (absent ones as None)."""
    train = opt.get("train") or {}
    held = [*STATE_HELD, *(f"train.{key}" for key in train if key.startswith("optim_"))]
    fingerprint = {key: opt[key] for key in sorted(opt) if key == "model_type" or key.startswith("network_")}
    fingerprint.update({key: _option(opt, key) for key in sorted(held)})
    return _plain({"version": FINGERPRINT_VERSION, **fingerprint})


def first_difference(recorded: Any, current: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first ``(dotted key, recorded value, current value)`` where two option trees differ, or None."""
    if isinstance(recorded, Mapping) and isinstance(current, Mapping):
        for key in sorted(set(recorded) | set(current), key=str):
            found = first_difference(recorded.get(key), current.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    return None if recorded == current else (where, recorded, current)


def write_training_state(
    model: Any,
    epoch: int,
    current_iter: int,
    *,
    files: Mapping[str, str],
    data: Mapping[str, int] | None,
    extra: Mapping[str, Any],
) -> None:
    """Write ``<iter>.state`` (rank 0, atomically) and prune old checkpoints; every rank must call it.

    Args:
        model: A plugin model (``optimizers``, ``schedulers``, ``opt``, ``options_fingerprint``).
        epoch: The epoch the loop is in.
        current_iter: The iteration just completed; -1 (BasicSR's "latest") writes nothing.
        files: The network files written at this iteration and their SHA-256.
        data: The sampler's position (None where the loop does not record it: BasicSR's train.py).
        extra: Entries a model adds (ERLModel: the stage).
    """
    if current_iter == -1:
        return
    opt = model.opt
    rng = gather_rng(opt)
    if opt.get("rank", 0) != 0:
        return
    state = {
        "epoch": epoch,
        "iter": current_iter,
        "optimizers": [optimizer.state_dict() for optimizer in model.optimizers],
        "schedulers": [scheduler.state_dict() for scheduler in model.schedulers],
        "rng": rng,
        "data": dict(data) if data is not None else None,
        "options": model.options_fingerprint,
        "files": dict(files),
        **dict(extra),
    }
    atomic_save(state, os.path.join(opt["path"]["training_states"], f"{current_iter}.state"))
    keep_last = (opt.get("logger") or {}).get("keep_last")
    if keep_last:
        deleted = prune_checkpoints(opt["path"]["training_states"], opt["path"]["models"], keep_last)
        if deleted:
            get_root_logger().info(f"logger.keep_last {keep_last}: deleted {', '.join(map(os.path.basename, deleted))}")


def _load_checked(path: str, opt: Mapping[str, Any]) -> dict[str, Any]:
    """Load a training state and check that it and the network files it needs are intact."""
    state = safe_load(path, "training state")
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"training state {path}: not a training state (has {keys}; needs {', '.join(STATE_KEYS)})"
        )
    models = opt["path"]["models"]
    files = state.get("files")
    if files:
        for name, digest in files.items():
            network = os.path.join(models, name)
            if not os.path.isfile(network):
                raise CheckpointError(f"training state {path}: the network file it needs, {network}, is missing")
            if file_digest(network) != digest:
                raise CheckpointError(
                    f"training state {path}: {network} does not match the checksum recorded with it "
                    "(partial, corrupt or overwritten)"
                )
            safe_load(network, "network")  # non-finite weights are refused here, before BasicSR loads them
        return state
    ignored = opt["path"].get("ignore_resume_networks") or []
    for key in opt:
        if key.startswith("network_") and key not in ignored:
            safe_load(os.path.join(models, f"net_{key.removeprefix('network_')}_{state['iter']}.pth"), "network")
    return state


def _warn(opt: Mapping[str, Any], message: str) -> None:
    # BasicSR sets its logger up after loading the state; until then it prints, as check_resume does.
    if opt.get("rank", 0) == 0:
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _check_networks_fit(opt: Mapping[str, Any], state: Mapping[str, Any], path: str) -> None:
    ignored = opt["path"].get("ignore_resume_networks") or []
    for key in opt:
        if not key.startswith("network_") or key in ignored:
            continue
        section = copy.deepcopy(dict(opt[key]))
        net = ARCH_REGISTRY.get(section.pop("type"))(**section)
        network = os.path.join(opt["path"]["models"], f"net_{key.removeprefix('network_')}_{state['iter']}.pth")
        try:
            net.load_state_dict(load_weights(network))
        except (RuntimeError, ValueError, AttributeError) as error:
            raise ResumeError(
                f"{path}: {network} does not fit {key} ({opt[key]['type']}): {error}; resume with the options "
                "that wrote it, or train under a new name"
            ) from None


def check_compatible(opt: Mapping[str, Any], state: Mapping[str, Any], path: str) -> None:
    """Refuse a state written by other options: other model type or networks, or the model's own check."""
    recorded = state.get("options")
    if recorded is None:  # a state from before fingerprints: the networks must at least fit
        _check_networks_fit(opt, state, path)
    else:
        current = options_fingerprint(opt)
        if recorded.get("version") != FINGERPRINT_VERSION:  # version 1 recorded fewer keys
            current = {
                key: value
                for key, value in current.items()
                if key == "model_type" or key in recorded or key.startswith("network_")
            }
            recorded = {key: value for key, value in recorded.items() if key != "version"}
            current.pop("version", None)
        found = first_difference(recorded, current)
        if found is not None:
            key, before, now = found
            raise ResumeError(
                f"{path}: written by options with {key}: {before!r}, but these give {key}: {now!r}; a resumed run "
                "takes the optimizer, schedule, random streams and stage from its state, so the change would not "
                "apply. Resume with the options that wrote it, or start a new run from its latest weights "
                "(another name, path.pretrain_network_g: <experiment>/models/net_g_latest.pth)"
            )
    check = getattr(MODEL_REGISTRY.get(opt["model_type"]), "check_resume_state", None)
    if check is not None:
        check(opt, state, path)


def load_resume_state(opt: dict[str, Any]) -> dict[str, Any] | None:
    """``basicsr.train.load_resume_state``, checked, with fallback, and loaded on the CPU.

    With ``--auto_resume`` takes the newest ``<iter>.state`` in ``path.training_states`` that loads
    and whose network files match their recorded checksums; a broken newer one is skipped with a
    warning. Otherwise takes ``path.resume_state``, if set. The state is then checked against the
    options (:func:`check_compatible`) and the networks are repointed as BasicSR does.

    Raises:
        ResumeError: before any file is written, naming the state and the reason.
    """
    state_dir = opt["path"]["training_states"]
    if opt["auto_resume"]:
        iterations = checkpoint_iterations(state_dir)
        if not iterations:
            return None
        problems = []
        for iteration in iterations:
            path = os.path.join(state_dir, f"{iteration}.state")
            try:
                state = _load_checked(path, opt)
                break
            except CheckpointError as error:
                problems.append(str(error))
                _warn(opt, f"{error}; falling back to the previous training state")
        else:
            raise ResumeError(f"{state_dir}: no usable training state: {'; '.join(problems)}")
    elif opt["path"].get("resume_state"):
        path = opt["path"]["resume_state"]
        try:
            state = _load_checked(path, opt)
        except CheckpointError as error:
            raise ResumeError(f"path.resume_state: {error}") from None
    else:
        return None
    check_compatible(opt, state, path)
    opt["path"]["resume_state"] = path
    check_resume(opt, state["iter"])
    return state
