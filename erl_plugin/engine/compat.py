"""What basicsr 1.4.2 needs to run here, in one place.

basicsr 1.4.2 (the last release on PyPI) predates the torch, torchvision and py-lmdb releases we
run on. ``import erl_plugin`` applies :data:`PLUGIN` (what the plugin's own use of BasicSR's parts
meets); when BasicSR's own ``train.py`` or ``test.py`` is the program, the start-up hook
(:mod:`erl_plugin_hook`) applies :data:`BASICSR_SCRIPTS` as well. Any other program that imports basicsr
gets it unchanged. Each patch applies only where its problem exists:

========================  =====================================================================
patch                     upstream problem it works around
========================  =====================================================================
functional_tensor         ``basicsr/data/degradations.py`` imports
                          ``torchvision.transforms.functional_tensor``, removed in
                          torchvision 0.17, so ``import basicsr`` fails.
lmdb_shared_env           py-lmdb >= 2 refuses to open one environment twice in a process, so
                          training and validation on one LMDB crash at the first validation
                          when they run in the same process.
------------------------  ------------ BasicSR's train.py and test.py only -------------------
dist_init_cpu             ``--launcher pytorch`` hard-codes the nccl backend and calls
                          ``torch.cuda.set_device(rank % device_count())``: ZeroDivisionError
                          without a GPU, so torchrun cannot train on CPU.
ddp_cpu                   ``BaseModel.model_to_device`` passes
                          ``device_ids=[torch.cuda.current_device()]`` to DDP, which fails
                          without CUDA (the plugin's models wrap correctly themselves).
resume_on_cpu             ``load_resume_state`` maps the state to ``torch.cuda.current_device()``:
                          ``--auto_resume`` fails without CUDA. Here: the plugin's checked
                          loader (:func:`erl_plugin.utils.resume.load_resume_state`).
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

What ``erl-train`` adds beyond these (atomic and checked checkpoints, exact training states,
RNG-neutral and sharded validation) are methods of the plugin's models
(:mod:`erl_plugin.models.reliable`) and steps of its pipeline (:mod:`erl_plugin.engine.pipeline`), not
patches; under BasicSR's train.py the plugin's models keep their methods, and a resumed run restarts
its epoch from the first batch as upstream does. Setting ``ERL_PLUGIN_COMPAT_DISABLE=name[,name...]``
skips patches by name: it exists to diagnose a patch and for the tests that show each patch is needed.
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

    from erl_plugin.models.reliable import cpu_ddp  # what the plugin's own models do

    upstream = BaseModel.model_to_device

    def model_to_device(self: BaseModel, net: Any) -> Any:
        if self.opt["dist"] and self.device.type == "cpu":
            return cpu_ddp(net, self.opt, self.device)
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
    """Wrap ``parse_options`` once: it refuses ``--force_yml``, checks the options file as ``erl-train`` does,
    swaps ``load_resume_state`` in ``basicsr/train.py`` (``resume_on_cpu``) and scales the iterations by
    ``$ERL_PLUGIN_ITERS_SCALE`` as ``erl-train`` does.

    BasicSR's train.py runs as ``__main__`` (directly or with -m): its code runs after the hook, binds its own
    functions, then calls ``parse_options`` first thing, so the wrapper replaces the function in the calling
    module's globals, the one place it can be reached from.
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


def _resume_on_cpu() -> None:
    from erl_plugin.utils import resume

    _script_swaps["load_resume_state"] = resume.load_resume_state
    _wrap_parse_options()


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


PLUGIN = (
    Patch("functional_tensor", _functional_tensor_missing, _alias_functional_tensor),
    Patch("lmdb_shared_env", _lmdb_refuses_reopen, _share_lmdb_envs),
)
"""Applied by ``import erl_plugin``: what the plugin's use of BasicSR's parts needs."""
BASICSR_SCRIPTS = (
    Patch("installed_root", lambda: _installed_script() is not None, _root_outside_site_packages),
    Patch("dist_init_cpu", _no_cuda, _gloo_on_cpu),
    Patch("ddp_cpu", _no_cuda, _ddp_without_device_ids),
    Patch("resume_on_cpu", _no_cuda, _resume_on_cpu),
    Patch("no_force_yml", _always, _no_force_yml),
    Patch("safe_yaml", _always, _safe_yaml),
    Patch("plateau_stop", _always, _plateau_stop),
)
"""Applied by the start-up hook when BasicSR's own train.py or test.py is the program."""
PATCH_NAMES = tuple(p.name for p in PLUGIN + BASICSR_SCRIPTS)

applied: list[str] = []
"""Names of the patches applied in this process, in order."""
_done: set[str] = set()


def _disabled() -> set[str]:
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    unknown = names - set(PATCH_NAMES)
    if unknown:  # an import cannot stop with a clean error: say it, and apply those patches
        print(
            f"warning: {DISABLE_ENV}: unknown patch {sorted(unknown)} ignored; allowed: {', '.join(PATCH_NAMES)}",
            file=sys.stderr,
        )
    return names - unknown


def _apply(patches: tuple[Patch, ...]) -> list[str]:
    disabled = _disabled()
    for patch in patches:
        if patch.name not in _done and patch.name not in disabled and patch.needed():
            patch.apply()
            applied.append(patch.name)
        _done.add(patch.name)
    return applied


def apply() -> list[str]:
    """Apply :data:`PLUGIN` once (``import erl_plugin`` does); return the names applied in this process."""
    _apply(PLUGIN[:1])  # functional_tensor, before basicsr is imported
    import basicsr  # noqa: F401  (the others patch basicsr's objects)

    return _apply(PLUGIN[1:])


def apply_to_basicsr_scripts() -> list[str]:
    """Apply :data:`BASICSR_SCRIPTS` once (the start-up hook does, in BasicSR's train.py and test.py)."""
    apply()
    return _apply(BASICSR_SCRIPTS)
