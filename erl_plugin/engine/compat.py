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
lmdb_shared_env           py-lmdb >= 2 refuses to open one environment twice in a process, so
                          training and validation on one LMDB crash at the first validation
                          when they run in the same process.
exact_resume              resume restarts the interrupted epoch from its first batch, saves no
                          RNG state, maps the state to ``torch.cuda.current_device()`` (fails
                          without CUDA) and looks for it relative to the working directory;
                          validation moves the training RNG streams. Replaced by
                          :mod:`erl_plugin.utils.resume` (seeded samples, resumable sampler, RNG
                          states, checked states with fallback, ``logger.keep_last``).
atomic_checkpoints        ``save_network`` and ``save_training_state`` write in place: a kill
                          mid-write leaves a truncated file. Here: temporary file, fsync, rename,
                          and the SHA-256 of each network file recorded for resume.
safe_load                 ``load_network`` calls ``torch.load`` without ``weights_only`` (runs
                          pickled code on torch < 2.6) and fails with a bare traceback on a
                          corrupt file. Here: ``weights_only=True``, a message naming the file.
dist_validation           ``dist_validation`` validates on rank 0 while the others wait in the
                          next all-reduce, into the process group's timeout on long validations.
                          Here: sharded over the ranks (:mod:`erl_plugin.models.validation`).
no_force_yml              ``--force_yml`` applies overrides with ``exec`` (and lists with
                          ``eval``): refused, with a pointer to ``erl-train --set``.
safe_yaml                 ``parse_options`` reads the options file with PyYAML's full
                          ``Loader``, so a ``!!python/object/apply`` tag runs code, a repeated
                          key silently replaces the first and an alias bomb expands. Here: the
                          file is checked as ``erl-train`` checks it (same message, exit 2) and
                          read with erl-train's loader (:mod:`erl_plugin.engine.strict_yaml`).
installed_root            ``basicsr/train.py`` and ``test.py`` put ``experiments/``, ``results/``
                          and ``tb_logger/`` two folders above themselves: inside site-packages
                          when basicsr is installed. Here: under ``$ERL_PLUGIN_ROOT``, else the
                          current directory, as ``erl-train`` does.
plateau_stop              ``basicsr/train.py`` has no place to catch the stop of ``PlateauLR``
                          (an exception out of its loop): it would end in a traceback, exit 1.
                          Here: one line and exit 0, as ``erl-train``.
========================  =====================================================================

The functional_tensor patch runs before anything of basicsr is imported; the others patch basicsr
objects afterwards. Setting ``ERL_PLUGIN_COMPAT_DISABLE=name[,name...]`` skips patches by name: it
exists to diagnose a patch and for the tests that show each patch is needed.
"""

import importlib.util
import logging
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
    from erl_plugin_hook import alias_functional_tensor  # the one the start-up hook gives plain basicsr

    alias_functional_tensor()


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


def _always() -> bool:
    return True


_TRAIN_SCRIPT = os.path.join("basicsr", "train.py")
_script_swaps: dict[str, Callable[..., Any]] = {}
_refuse_force_yml = False
_check_yaml = False
_quiet_plateau_stop = False


def _options_file(argv: list[str]) -> str | None:
    """The ``-opt`` value of BasicSR's command line, read as BasicSR's own parser reads it."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-opt")
    known, _ = parser.parse_known_args(argv)
    return known.opt


def _refuse_unsafe_options(argv: list[str]) -> None:
    """Exit (status 2) with erl-train's message when the options file is not plain YAML."""
    path = _options_file(argv)
    if path is None:
        return
    from erl_plugin.engine.options import OptionsError, load_yaml  # noqa: PLC0415 (the plugin is loaded by now)

    try:
        load_yaml(path, "options")
    except OptionsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _wrap_parse_options() -> None:
    """Wrap ``parse_options`` once: it refuses ``--force_yml``, swaps names in ``basicsr/train.py`` and,
    for BasicSR's scripts, scales the iterations by ``$ERL_PLUGIN_ITERS_SCALE`` as ``erl-train`` does.

    When basicsr/train.py runs as a script (directly or with -m), that module is ``__main__``, whose
    code runs after the patches: it binds its own functions, then calls ``parse_options`` first thing,
    so the wrapper replaces them in the calling module's globals. ``basicsr.train`` as imported by
    ``erl-train`` is patched directly.
    """
    from basicsr.utils import options

    if getattr(options.parse_options, "erl_plugin_wrapped", False):
        return
    upstream = options.parse_options

    def parse_options(root_path: str, is_train: bool = True) -> tuple[dict, Any]:
        if _refuse_force_yml and any(
            len(arg.split("=")[0]) > 3 and "--force_yml".startswith(arg.split("=")[0]) for arg in sys.argv[1:]
        ):
            raise SystemExit(
                "error: --force_yml applies overrides with exec, which erl_plugin refuses; use "
                "erl-train -opt FILE --set key.sub=value (YAML values, never run as code)"
            )
        if _check_yaml:
            _refuse_unsafe_options(sys.argv[1:])
        caller = sys._getframe(1).f_globals
        for name, replacement in _script_swaps.items():
            current = caller.get(name)
            if current is not None and getattr(current, "__code__", None) is not None:
                if current.__code__.co_filename.endswith(_TRAIN_SCRIPT):
                    caller[name] = replacement
        opt, args = upstream(root_path, is_train)
        if caller.get("__name__") == "__main__":  # BasicSR's script; erl-train has scaled its options already
            opt = _scaled_from_environment(opt)
            if _quiet_plateau_stop:
                _end_quietly_at_a_plateau()
        return opt, args

    parse_options.erl_plugin_wrapped = True
    options.parse_options = parse_options


def _end_quietly_at_a_plateau() -> None:
    """BasicSR's script has nowhere to catch the stop of ``PlateauLR`` (an exception out of its loop): end
    it as ``erl-train`` does, with one line and exit status 0, once the latest networks are written."""
    if getattr(sys.excepthook, "erl_plugin_plateau", False):
        return
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        from erl_plugin.models.schedulers import PlateauReached  # noqa: PLC0415

        if issubclass(kind, PlateauReached):
            print(f"{os.path.basename(sys.argv[0])}: training ended: {value}", file=sys.stderr, flush=True)
            logging.shutdown()
            os._exit(0)  # the exception is past every frame: nothing of BasicSR's script is left to run
        previous(kind, value, traceback)

    excepthook.erl_plugin_plateau = True
    sys.excepthook = excepthook


def _scaled_from_environment(opt: dict) -> dict:
    """``opt`` with its iterations scaled by ``$ERL_PLUGIN_ITERS_SCALE`` when set, as erl-train does."""
    from erl_plugin.engine.options import OptionsError, scale_requested_iterations  # noqa: PLC0415

    try:
        scaled, scale = scale_requested_iterations(opt, None)
    except OptionsError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if scale is not None:
        print(scale, file=sys.stderr, flush=True)
        opt.update(scaled)  # in place: BasicSR's OrderedDict, with its other keys
    return opt


def _exact_resume() -> None:
    import basicsr.train
    from basicsr.models.base_model import BaseModel

    from erl_plugin.utils import resume

    for name in ("load_resume_state", "create_train_val_dataloader"):
        setattr(basicsr.train, name, getattr(resume, name))
        _script_swaps[name] = getattr(resume, name)
    _wrap_parse_options()

    def save_training_state(self: BaseModel, epoch: int, current_iter: int) -> None:
        resume.write_training_state(self, epoch, current_iter)

    upstream_validation = BaseModel.validation

    def validation(self: BaseModel, *args: Any, **kwargs: Any) -> None:
        # Validation must not move the streams training draws from, or its frequency changes training.
        rng = resume.capture_rng()
        try:
            upstream_validation(self, *args, **kwargs)
        finally:
            resume.restore_rng(rng)

    BaseModel.save_training_state = save_training_state
    BaseModel.validation = validation


def _atomic_checkpoints() -> None:
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.dist_util import master_only

    from erl_plugin.utils.checkpoint import atomic_save

    @master_only
    def save_network(
        self: BaseModel, net: Any, net_label: str, current_iter: int | str, param_key: str | list[str] = "params"
    ) -> None:
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError(f"save_network: {len(nets)} networks but {len(keys)} param keys")
        state = {
            key: {k.removeprefix("module."): v.cpu() for k, v in self.get_bare_model(n).state_dict().items()}
            for n, key in zip(nets, keys, strict=True)
        }
        name = f"{net_label}_{'latest' if current_iter == -1 else current_iter}.pth"
        digest = atomic_save(state, os.path.join(self.opt["path"]["models"], name))
        if isinstance(current_iter, int) and current_iter >= 0:  # what the training state will check on resume
            files = self.__dict__.setdefault("checkpoint_files", {})
            files.setdefault(current_iter, {})[name] = digest

    BaseModel.save_network = save_network


def _safe_load_network() -> None:
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import get_root_logger

    from erl_plugin.utils.checkpoint import load_fitting, load_weights

    def load_network(self: BaseModel, net: Any, load_path: str, strict: bool = True, param_key: str = "params") -> None:
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

    BaseModel.load_network = load_network


def _sharded_dist_validation() -> None:
    from basicsr.models.sr_model import SRModel

    def dist_validation(self: SRModel, dataloader: Any, current_iter: int, tb_logger: Any, save_img: bool) -> None:
        # Imported on first use: erl_plugin.models is not loaded yet while the patches apply.
        from erl_plugin.models.validation import sharded_validation

        sharded_validation(self, dataloader, current_iter, tb_logger, save_img)

    SRModel.dist_validation = dist_validation


def _plateau_stop() -> None:
    global _quiet_plateau_stop
    _quiet_plateau_stop = True
    _wrap_parse_options()


def _no_force_yml() -> None:
    global _refuse_force_yml
    _refuse_force_yml = True
    _wrap_parse_options()


def _safe_yaml() -> None:
    global _check_yaml
    import yaml
    from basicsr.utils import options

    from erl_plugin.engine.strict_yaml import StrictLoader

    class SafeOrderedLoader(StrictLoader):
        """erl-train's loader (safe; no repeated keys, no alias bombs), building mappings as OrderedDict as
        BasicSR's loader does."""

    def ordered_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
        from collections import OrderedDict  # noqa: PLC0415

        return OrderedDict(loader.construct_pairs(node))

    SafeOrderedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, ordered_mapping)
    upstream = options.ordered_yaml

    def ordered_yaml() -> tuple[type, type]:
        return SafeOrderedLoader, upstream()[1]

    options.ordered_yaml = ordered_yaml
    _check_yaml = True
    _wrap_parse_options()


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


ROOT_ENV = "ERL_PLUGIN_ROOT"


def _installed_script() -> str | None:
    """``train.py`` or ``test.py`` when ``__main__`` is BasicSR's script inside an installed package."""
    import site
    import sysconfig

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    name = os.path.basename(main_file or "")
    if name not in ("train.py", "test.py"):
        return None
    package = os.path.dirname(os.path.realpath(main_file))
    spec = importlib.util.find_spec("basicsr")
    if spec is None or spec.origin is None or os.path.dirname(os.path.realpath(spec.origin)) != package:
        return None
    installed = {*site.getsitepackages(), site.getusersitepackages(), *sysconfig.get_paths().values()}
    return name if os.path.dirname(package) in {os.path.realpath(path) for path in installed} else None


def _root_outside_site_packages() -> None:
    # basicsr/train.py and test.py take their root from their own path, two levels up: for an
    # installed package that is site-packages. They compute it from __main__.__file__ after their
    # imports (which load the plugin), so pointing that at <root>/basicsr/<script> moves the root.
    root = os.path.abspath(os.environ.get(ROOT_ENV) or os.getcwd())
    sys.modules["__main__"].__file__ = os.path.join(root, "basicsr", _installed_script())


PRE_IMPORT = (
    Patch("functional_tensor", _functional_tensor_missing, _alias_functional_tensor),
    Patch("installed_root", lambda: _installed_script() is not None, _root_outside_site_packages),
)
POST_IMPORT = (
    Patch("dist_init_cpu", _no_cuda, _gloo_on_cpu),
    Patch("ddp_cpu", _no_cuda, _ddp_without_device_ids),
    Patch("lmdb_shared_env", _lmdb_refuses_reopen, _share_lmdb_envs),
    Patch("exact_resume", _always, _exact_resume),
    Patch("atomic_checkpoints", _always, _atomic_checkpoints),
    Patch("safe_load", _always, _safe_load_network),
    Patch("dist_validation", _always, _sharded_dist_validation),
    Patch("no_force_yml", _always, _no_force_yml),
    Patch("safe_yaml", _always, _safe_yaml),
    Patch("plateau_stop", _always, _plateau_stop),
)
PATCH_NAMES = tuple(p.name for p in PRE_IMPORT + POST_IMPORT)

applied: list[str] = []
"""Names of the patches applied in this process, in order."""
_done = False


def _disabled() -> set[str]:
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    unknown = names - set(PATCH_NAMES)
    if unknown:  # an import cannot stop with a clean error: say it, and apply those patches
        print(
            f"warning: {DISABLE_ENV}: unknown patch {sorted(unknown)} ignored; allowed: {', '.join(PATCH_NAMES)}",
            file=sys.stderr,
        )
    return names - unknown


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
