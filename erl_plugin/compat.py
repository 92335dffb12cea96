"""Every patch of basicsr 1.4.2 in one place.

basicsr 1.4.2 (the last release on PyPI) predates the torch, torchvision and py-lmdb releases we
run on. :func:`apply` runs on ``import erl_plugin`` and fixes what the plugin meets, each patch only
where its problem exists:

========================  =====================================================================
patch                     upstream problem it works around
========================  =====================================================================
functional_tensor         ``basicsr/data/degradations.py`` imports
                          ``torchvision.transforms.functional_tensor``, removed in
                          torchvision 0.17, so ``import basicsr`` fails.
dist_init_cpu             ``--launcher pytorch`` hard-codes the nccl backend and calls
                          ``torch.cuda.set_device(rank % device_count())``: ZeroDivisionError
                          without a GPU, so torchrun cannot train on CPU.
ddp_cpu                   ``BaseModel.model_to_device`` passes
                          ``device_ids=[torch.cuda.current_device()]`` to DDP, which fails
                          without CUDA.
resume_cpu                ``basicsr.train.load_resume_state`` maps the state to
                          ``torch.cuda.current_device()`` (fails without CUDA) and looks for
                          states relative to the working directory instead of the experiment.
lmdb_shared_env           py-lmdb >= 2 refuses to open one environment twice in a process, so
                          training and validation on one LMDB crash at the first validation
                          when they run in the same process.
========================  =====================================================================

The functional_tensor patch runs before anything of basicsr is imported; the others patch basicsr
objects afterwards. Setting ``ERL_PLUGIN_COMPAT_DISABLE=name[,name...]`` skips patches by name: it
exists to diagnose a patch and for the tests that show each patch is needed.
"""

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DISABLE_ENV = "ERL_PLUGIN_COMPAT_DISABLE"


@dataclass(frozen=True)
class Patch:
    """One workaround: its name, whether this environment needs it, and how to apply it."""

    name: str
    needed: Callable[[], bool]
    apply: Callable[[], None]


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def _functional_tensor_missing() -> bool:
    return importlib.util.find_spec("torchvision.transforms.functional_tensor") is None


def _alias_functional_tensor() -> None:
    # basicsr only takes rgb_to_grayscale from it, which lives in transforms.functional now.
    import torchvision.transforms.functional as functional

    sys.modules["torchvision.transforms.functional_tensor"] = functional


def _gloo_on_cpu() -> None:
    import torch.distributed as dist
    from basicsr.utils import dist_util

    def _init_dist_pytorch(backend: str, **kwargs: Any) -> None:
        # Without CUDA there is no device to select and nccl cannot run: use gloo.
        dist.init_process_group(backend="gloo", **kwargs)

    dist_util._init_dist_pytorch = _init_dist_pytorch


def _ddp_without_device_ids() -> None:
    from basicsr.models.base_model import BaseModel
    from torch.nn.parallel import DistributedDataParallel

    upstream = BaseModel.model_to_device

    def model_to_device(self: BaseModel, net: Any) -> Any:
        if self.opt["dist"] and self.device.type == "cpu":
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get("find_unused_parameters", False)
            )
        return upstream(self, net)

    BaseModel.model_to_device = model_to_device


def load_resume_state(opt: dict) -> dict | None:
    """CPU-safe replacement for ``basicsr.train.load_resume_state``.

    Finds the latest ``<iter>.state`` in ``opt['path']['training_states']`` when auto-resuming
    (or takes ``opt['path']['resume_state']``), loads it on the CPU with ``weights_only=True`` and
    repoints the networks through basicsr's ``check_resume``, as upstream does.
    """
    import torch
    from basicsr.utils import check_resume, scandir

    resume_state_path = None
    if opt["auto_resume"]:
        state_dir = opt["path"]["training_states"]
        if os.path.isdir(state_dir):
            stems = (name[: -len(".state")] for name in scandir(state_dir, suffix=".state"))
            iters = [int(stem) for stem in stems if stem.isdigit()]
            if iters:
                resume_state_path = os.path.join(state_dir, f"{max(iters)}.state")
                opt["path"]["resume_state"] = resume_state_path
    elif opt["path"].get("resume_state"):
        resume_state_path = opt["path"]["resume_state"]
    if resume_state_path is None:
        return None
    resume_state = torch.load(resume_state_path, map_location="cpu", weights_only=True)
    check_resume(opt, resume_state["iter"])
    return resume_state


def _resume_on_cpu() -> None:
    # train_pipeline calls load_resume_state through its module's globals. basicsr/__init__.py has
    # already imported basicsr.train: replace it there. When basicsr/train.py runs as a script
    # (directly or with -m), that module is __main__, whose code runs after this patch: it binds
    # parse_options from basicsr.utils.options and calls it first thing, so a wrapper there swaps
    # load_resume_state in the calling module's globals.
    import basicsr.train
    from basicsr.utils import options

    basicsr.train.load_resume_state = load_resume_state

    upstream = options.parse_options
    train_script = os.path.join("basicsr", "train.py")

    def parse_options(root_path: str, is_train: bool = True) -> tuple[dict, Any]:
        caller = sys._getframe(1).f_globals
        loader = caller.get("load_resume_state")
        if is_train and loader is not None and loader.__code__.co_filename.endswith(train_script):
            caller["load_resume_state"] = load_resume_state
        return upstream(root_path, is_train)

    options.parse_options = parse_options


def _lmdb_refuses_reopen() -> bool:
    import lmdb

    return int(lmdb.__version__.split(".")[0]) >= 2


def _share_lmdb_envs() -> None:
    from basicsr.utils.file_client import LmdbBackend

    from erl_plugin.data.lmdb_env import open_lmdb

    def __init__(
        self: LmdbBackend,
        db_paths: str | list[str],
        client_keys: str | list[str] = "default",
        readonly: bool = True,
        lock: bool = False,
        readahead: bool = False,
        **kwargs: Any,
    ) -> None:
        paths = [str(p) for p in db_paths] if isinstance(db_paths, list) else [str(db_paths)]
        keys = [client_keys] if isinstance(client_keys, str) else list(client_keys)
        if len(keys) != len(paths):
            raise ValueError(f"client_keys {keys} and db_paths {paths} must have the same length")
        self.db_paths = paths
        self._client = {
            key: open_lmdb(path, readonly=readonly, lock=lock, readahead=readahead, **kwargs)
            for key, path in zip(keys, paths, strict=True)
        }

    LmdbBackend.__init__ = __init__


PRE_IMPORT = (Patch("functional_tensor", _functional_tensor_missing, _alias_functional_tensor),)
POST_IMPORT = (
    Patch("dist_init_cpu", _no_cuda, _gloo_on_cpu),
    Patch("ddp_cpu", _no_cuda, _ddp_without_device_ids),
    Patch("resume_cpu", _no_cuda, _resume_on_cpu),
    Patch("lmdb_shared_env", _lmdb_refuses_reopen, _share_lmdb_envs),
)
PATCH_NAMES = tuple(p.name for p in PRE_IMPORT + POST_IMPORT)

applied: list[str] = []
"""Names of the patches applied in this process, in order."""
_done = False


def _disabled() -> set[str]:
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    unknown = names - set(PATCH_NAMES)
    if unknown:
        raise ValueError(f"{DISABLE_ENV}: unknown patch {sorted(unknown)}; allowed: {', '.join(PATCH_NAMES)}")
    return names


def apply() -> list[str]:
    """Apply every needed patch once; return the names applied in this process."""
    global _done
    if _done:
        return applied
    disabled = _disabled()
    for stage in (PRE_IMPORT, POST_IMPORT):
        for patch in stage:
            if patch.name not in disabled and patch.needed():
                patch.apply()
                applied.append(patch.name)
        if stage is PRE_IMPORT:
            import basicsr  # noqa: F401  (post-import patches need basicsr loaded)
    _done = True
    return applied
