"""Reading, overriding and checking BasicSR options files before BasicSR sees them.

BasicSR fails deep inside its pipeline on a misspelt network type or a missing dataset path, and
its ``--force_yml`` applies overrides with ``exec``. Our entry points load the file here (a safe
loader that refuses repeated keys and alias bombs: :mod:`erl_plugin.engine.strict_yaml`), apply
``--set key.sub=value`` overrides (values parsed as YAML, no code runs), check it against the schema
(:mod:`erl_plugin.engine.schema`) and the registries, and hand BasicSR the result.
"""

import contextlib
import copy
import importlib
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from erl_plugin.data.dataset_check import DatasetCheckError, check_dataset
from erl_plugin.data.dataset_keys import check_keys
from erl_plugin.engine.schema import (
    ENVIRONMENT,
    FLOAT_TEXT,
    ITERS_SCALE_ENV,
    OptionsError,
    check_schema,
    read_environment,
)
from erl_plugin.engine.strict_yaml import StrictLoader, YamlRefused, load_one_value
from erl_plugin.metrics.protocols import check_protocol
from erl_plugin.models.derain_model import DerainModel
from erl_plugin.models.stages import check_optimizers
from erl_plugin.utils.checkpoint import check_pretrained_fits
from erl_plugin.utils.speed import check_speed_options, requested_speed_options


def load_yaml(path: str, kind: str) -> Any:
    """Read a YAML file safely; raise :class:`OptionsError` naming it if missing or malformed.

    The loader (:class:`~erl_plugin.engine.strict_yaml.StrictLoader`) is PyYAML's safe one that also
    refuses a key written twice in one mapping and aliases that expand past a small bound.

    Args:
        path: The file.
        kind: What the file holds, for messages (``options``, ``models``, ...).
    """
    if not os.path.isfile(path):
        raise OptionsError(f"{path}: {kind} file not found")
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.load(handle, Loader=StrictLoader)
        except YamlRefused as error:
            raise OptionsError(f"{path}: refused: {error.problem}") from None
        except yaml.constructor.ConstructorError as error:
            where = f" (line {error.problem_mark.line + 1})" if error.problem_mark else ""
            raise OptionsError(
                f"{path}{where}: refused: {error.problem}; a {kind} file holds plain YAML only (mappings, lists, "
                "numbers, strings, !!float), never tags that construct Python objects or run code"
            ) from None
        except yaml.YAMLError as error:
            raise OptionsError(f"{path}: not valid YAML: {error}") from None


def load_options(path: str) -> dict[str, Any]:
    """Load a YAML options file as a plain dict."""
    opt = load_yaml(path, "options")
    if not isinstance(opt, dict):
        raise OptionsError(f"{path}: expected a mapping of options at the top level, got {type(opt).__name__}")
    return opt


def _parse_value(text: str) -> Any:
    """One YAML value, where ``4e-4`` is a float (YAML 1.1 would read it as a string); a quoted value stays a string."""
    value = load_one_value(text)
    quoted = text.strip()[:1] in ("'", '"')
    if isinstance(value, str) and not quoted and FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


def apply_overrides(opt: Mapping[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Return a copy of ``opt`` with ``key.sub=value`` overrides applied.

    The key must exist; prefix it with ``+`` to add a new one (``+path.pretrain_network_g=x.pth``).
    Values are YAML scalars or flow collections (``4e-4``, ``true``, ``[1, 2]``, ``{a: 1}``, ``null``) on
    one line; several documents or a block of YAML are refused. What a value may be is checked later,
    with the file (:func:`validate_options`): ``--set logger=null`` replaces a section that must stay a
    mapping.

    Example:
        >>> apply_overrides({"train": {"total_iter": 10}}, ["train.total_iter=20"], "x.yml")
        {'train': {'total_iter': 20}}
    """
    result = copy.deepcopy(dict(opt))
    for override in overrides:
        key, sep, text = override.partition("=")
        create = key.startswith("+")
        path = key.lstrip("+").strip().split(".")
        if not sep or not all(path):
            raise OptionsError(f"--set {override!r}: expected key.sub=value")
        try:
            value = _parse_value(text)
        except YamlRefused as error:
            raise OptionsError(f"--set {override!r}: {error.problem}") from None
        except yaml.YAMLError as error:
            raise OptionsError(f"--set {override!r}: value is not valid YAML: {error}") from None
        node: Any = result
        for depth, part in enumerate(path):
            where = ".".join(path[: depth + 1])
            if not isinstance(node, dict):
                raise OptionsError(f"--set {override!r}: {'.'.join(path[:depth])} in {source} is not a mapping")
            last = depth == len(path) - 1
            if part not in node and not (create and last):
                allowed = ", ".join(sorted(map(str, node))) or "none"
                hint = "; prefix the key with + to add it" if last else ""
                raise OptionsError(f"--set {override!r}: {where} is not in {source} (keys there: {allowed}){hint}")
            if last:
                node[part] = value
            else:
                node = node[part]
    return result


_ITER_KEYS = (
    ("train", "total_iter"),
    ("val", "val_freq"),
    ("logger", "save_checkpoint_freq"),
    ("logger", "print_freq"),
)


def requested_iters_scale(flag: float | None) -> tuple[float | None, str]:
    """The iteration scale asked for and where it came from: ``--iters-scale``, else the environment.

    ``ERL_PLUGIN_ITERS_SCALE=F`` shortens every training command (``erl-train``, ``python -m
    erl_plugin.train``, torchrun's workers, BasicSR's ``train.py``, the study) without editing it.

    Raises:
        OptionsError: the flag or the variable is not a finite number > 0.
    """
    if flag is not None:
        problem = ENVIRONMENT[ITERS_SCALE_ENV].problem(flag)
        if problem is not None:
            raise OptionsError(f"--iters-scale: {problem}")
        return flag, f"--iters-scale {flag:g}"
    factor = read_environment(ITERS_SCALE_ENV)
    if factor is None:
        return None, ""
    return factor, f"{ITERS_SCALE_ENV}={os.environ[ITERS_SCALE_ENV].strip()}"


@dataclass(frozen=True)
class IterationScale:
    """A scale applied to a run's iterations, and where it was asked for (printed as one line)."""

    factor: float
    source: str

    def __str__(self) -> str:
        return f"iterations scaled by {self.factor:g} ({self.source})"


def scale_requested_iterations(
    opt: Mapping[str, Any], flag: float | None
) -> tuple[dict[str, Any], IterationScale | None]:
    """``opt`` scaled as :func:`requested_iters_scale` asks, and the scale (None when nothing changed)."""
    factor, source = requested_iters_scale(flag)
    if factor is None:
        return dict(opt), None
    scaled = scale_iterations(opt, factor)
    return scaled, IterationScale(factor, source) if scaled != opt else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


SCALED_EVENTS = 10
"""A run scaled down validates and saves about this many times at most: a validation costs the same at any
scale, so the file's spacing (the flagship's 61 validations) would make a short run mostly validation."""
SCALED_KEEP_LAST = 2
"""``logger.keep_last`` of a run scaled down whose options set none (the checkpoints of its stages stay)."""


def scale_iterations(opt: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """A copy of ``opt`` with every iteration count multiplied by ``factor`` (rounded, at least 1).

    Scaled together: ``train.total_iter``, ``train.stage_iters`` (or the ``iters`` of each of
    ``train.stages``), the milestones, periods and (PlateauLR) patience of ``train.scheduler`` and of
    every ``train.stage_options.<stage>.scheduler``, ``val.val_freq``, ``logger.save_checkpoint_freq``
    and ``logger.print_freq``. ``total_iter`` becomes the sum of the
    scaled stages when there are stages, so the two always agree. A value that is not a number (or a
    section that is not a mapping) is left as written, for :func:`validate_options` to name.

    Scaled down (``factor`` < 1), validation and checkpoints are spaced at least ``total_iter /``
    :data:`SCALED_EVENTS` apart (a PlateauLR's patience at least one validation apart), and
    ``logger.keep_last`` defaults to :data:`SCALED_KEEP_LAST`.

    Raises:
        OptionsError: ``factor`` is not a finite number > 0, or a scaled count is not finite.
    """
    problem = ENVIRONMENT[ITERS_SCALE_ENV].problem(factor)
    if problem is not None:
        raise OptionsError(f"iters_scale {problem}")
    result = copy.deepcopy(dict(opt))

    def scaled(value: Any) -> Any:
        if not _is_number(value):
            return value
        product = float(value) * factor
        if not math.isfinite(product):
            raise OptionsError(f"iters_scale {factor:g}: {value!r} iterations scaled by it is not a finite number")
        return max(1, round(product))

    def scaled_list(values: Any) -> Any:
        return [scaled(v) for v in values] if isinstance(values, list) and all(map(_is_number, values)) else values

    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    for section, key in _ITER_KEYS:
        if key in mapping(result.get(section)):
            result[section][key] = scaled(result[section][key])
    train = mapping(result.get("train"))
    stage_iters = train.get("stage_iters")
    if isinstance(stage_iters, list) and stage_iters and all(map(_is_number, stage_iters)):
        train["stage_iters"] = [v if v == 0 else scaled(v) for v in stage_iters]  # a skipped stage1 stays skipped
        train["total_iter"] = sum(train["stage_iters"])
    stages = train.get("stages") if isinstance(train.get("stages"), list) else []
    if stages and all(isinstance(s, dict) and _is_number(s.get("iters")) for s in stages):
        for stage in stages:
            stage["iters"] = scaled(stage["iters"])
        train["total_iter"] = sum(stage["iters"] for stage in stages)
    schedulers = [train.get("scheduler")]
    schedulers += [mapping(s).get("scheduler") for s in mapping(train.get("stage_options")).values()]
    schedulers += [mapping(s).get("scheduler") for s in stages]
    for scheduler in map(mapping, schedulers):
        for key in ("milestones", "periods"):
            if scheduler.get(key):
                scheduler[key] = scaled_list(scheduler[key])
        if isinstance(scheduler.get("patience"), int) and not isinstance(scheduler["patience"], bool):
            scheduler["patience"] = scaled(scheduler["patience"])
    if factor < 1 and _is_number(train.get("total_iter")):
        _space_out_scaled_events(result, int(train["total_iter"]), list(map(mapping, schedulers)))
    return result


def _space_out_scaled_events(opt: dict[str, Any], total_iter: int, schedulers: list[dict[str, Any]]) -> None:
    """Floors of a run scaled down: see :func:`scale_iterations`."""
    spacing = max(1, math.ceil(total_iter / SCALED_EVENTS))
    for section, key in (("val", "val_freq"), ("logger", "save_checkpoint_freq")):
        values = opt.get(section)
        if isinstance(values, dict) and _is_number(values.get(key)) and values[key] < spacing:
            values[key] = spacing
    val = opt.get("val")
    val_freq = val.get("val_freq") if isinstance(val, dict) else None
    for scheduler in schedulers:
        patience = scheduler.get("patience")
        if scheduler.get("type") == "PlateauLR" and _is_number(patience) and _is_number(val_freq):
            scheduler["patience"] = max(patience, val_freq)
    logger = opt.get("logger")
    if isinstance(logger, dict) and "keep_last" not in logger:
        logger["keep_last"] = SCALED_KEEP_LAST


def import_custom_modules(opt: Mapping[str, Any], source: str) -> list[str]:
    """Import the modules ``custom_imports`` lists, so the networks they register can be built.

    The current directory (the root) comes first on the import path, as for ``python -m``. This is
    how a network of your own reaches ``erl-train`` and ``erl-test`` (with ``python basicsr/train.py``,
    BasicSR itself imports ``basicsr/archs/*_arch.py``).

    Returns:
        The names imported.

    Raises:
        OptionsError: naming the module that is not a list of names or does not import.
    """
    names = opt.get("custom_imports") or []
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise OptionsError(f"{source}: custom_imports: expected a list of module names, got {names!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise OptionsError(
                f"{source}: custom_imports: {name!r} cannot be imported ({error}); the import path starts at "
                f"{os.getcwd()}, then PYTHONPATH"
            ) from None
    return names


def _registered(registry: Any) -> str:
    return ", ".join(sorted(registry.keys()))


def _check_registered(value: Any, registry: Any, where: str, what: str, source: str) -> None:
    if value not in registry:
        raise OptionsError(
            f"{source}: {where}: {value!r} is not a registered {what}; registered: {_registered(registry)}"
        )


def _check_path(value: Any, where: str, source: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not os.path.exists(os.path.expanduser(value)):
        raise OptionsError(
            f"{source}: {where}: {value!r} does not exist (relative paths are resolved from {os.getcwd()})"
        )


def _check_checkpoint_fits(net: torch.nn.Module, path: Mapping[str, Any], suffix: str, source: str) -> None:
    try:
        check_pretrained_fits(net, path, suffix)
    except ValueError as error:
        raise OptionsError(f"{source}: {error}") from None


def _check_model(opt: Mapping[str, Any], networks: Mapping[str, torch.nn.Module], is_train: bool, source: str) -> None:
    """The model type's own check (``check_options``, a static method of the plugin's models), or, for
    BasicSR's SRModel in training, its optimizer and scheduler built on a stand-in parameter."""
    check = getattr(MODEL_REGISTRY.get(opt["model_type"]), "check_options", None)
    try:
        if check is not None:
            check(opt, networks, is_train)
        elif is_train and opt["model_type"] == "SRModel":
            check_optimizers(opt)
    except ValueError as error:
        raise OptionsError(f"{source}: {error}") from None


def _check_speed(opt: Mapping[str, Any], source: str) -> None:
    """The speed options are valid, and the model reads them (plain SRModel would ignore them)."""
    try:
        check_speed_options(opt)
    except ValueError as error:
        raise OptionsError(f"{source}: {error}") from None
    requested = requested_speed_options(opt)
    if requested and not issubclass(MODEL_REGISTRY.get(opt["model_type"]), DerainModel):
        raise OptionsError(
            f"{source}: {', '.join(requested)}: model_type {opt['model_type']} runs fp32 eagerly only; "
            "use model_type: DerainModel (any single network) or ERLModel"
        )


def _check_devices(opt: Mapping[str, Any], source: str) -> None:
    """``num_gpu`` (auto or an integer >= 0, by the schema) asks for no more CUDA devices than this machine has."""
    wanted = opt.get("num_gpu", "auto")
    if wanted == "auto" or wanted is None:
        return
    present = torch.cuda.device_count()
    if wanted > present:
        raise OptionsError(
            f"{source}: num_gpu: {wanted} but this machine has {present} CUDA device(s); use num_gpu: 0 (the CPU), "
            f"auto, or at most {present}"
        )


MAX_NETWORK_PARAMETERS = 500_000_000
"""The most parameters the options check lets one ``network_*`` section register while it is built
(an ERLNet registers its backbone twice): 20 times the largest restoration networks in common use
(Restormer 26M, NAFNet-64 68M), far below what would exhaust a machine's memory before BasicSR starts."""

_TRAINING_COPIES = 4
"""Copies of the weights that training holds: the weights, their gradients and Adam's two moments."""


class _TooLarge(Exception):
    """A network build passed :data:`MAX_NETWORK_PARAMETERS` (raised from inside its constructor)."""


@contextlib.contextmanager
def _parameter_budget(limit: int) -> Iterator[None]:
    """Abort a network build (:class:`_TooLarge`) once the parameters it registers pass ``limit``.

    The hook runs as each parameter is registered, before the constructor initialises its values, so
    a huge network stops at its first oversized tensor, whose pages are never touched.
    """
    registered = 0

    def count(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        nonlocal registered
        registered += param.numel() if param is not None else 0
        if registered > limit:
            raise _TooLarge

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        yield
    finally:
        handle.remove()


def _size_options(section: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The integer options of a network section (``num_feat: 32``, ``backbone.num_down: 40``), for messages."""
    found = []
    for key, value in section.items():
        if isinstance(value, Mapping):
            found += _size_options(value, f"{prefix}{key}.")
        elif isinstance(value, int) and not isinstance(value, bool):
            found.append(f"{prefix}{key}: {value}")
    return found


def _smaller(key: str, section: Mapping[str, Any]) -> str:
    sizes = _size_options(section)
    return f"make {key} smaller ({', '.join(sizes)})" if sizes else f"make {key} smaller"


def _too_large(key: str, section: Mapping[str, Any], source: str) -> OptionsError:
    return OptionsError(
        f"{source}: {key}: builds more than {MAX_NETWORK_PARAMETERS:,} parameters, the bound of one network; "
        f"{_smaller(key, section)}"
    )


def _build_network(section: Mapping[str, Any]) -> torch.nn.Module:
    # Through the registry: basicsr's build_network would set up its logger before the pipeline does.
    kwargs = {k: v for k, v in copy.deepcopy(dict(section)).items() if k != "type"}
    return ARCH_REGISTRY.get(section["type"])(**kwargs)


def _meta_network(key: str, section: Mapping[str, Any], source: str) -> torch.nn.Module | None:
    """``section``'s network on the meta device (shapes only, no memory); None when it cannot be built there.

    Raises:
        OptionsError: the network passes :data:`MAX_NETWORK_PARAMETERS`, or its sizes overflow.
    """
    try:
        with torch.device("meta"), _parameter_budget(MAX_NETWORK_PARAMETERS):
            return _build_network(section)
    except _TooLarge:
        raise _too_large(key, section, source) from None
    except Exception as error:  # bad options, or a constructor that needs real tensors (an adapter's probe):
        # the real build reports the first and sizes the second, under the same budget
        if "overflow" in str(error).lower():
            raise _too_large(key, section, source) from None
        return None


def _activation_bytes(net: torch.nn.Module, opt: Mapping[str, Any]) -> int:
    """The bytes of the outputs of ``net``'s layers for one training batch (``batch_size_per_gpu`` crops of
    ``gt_size``), from a forward pass on the meta device; 0 when the options or the network do not say."""
    train_set = (opt.get("datasets") or {}).get("train") or {}
    batch, size = train_set.get("batch_size_per_gpu"), train_set.get("gt_size")
    scale = opt.get("scale", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (batch, size, scale)):
        return 0
    conv = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return 0
    total = 0

    def add(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        if next(module.children(), None) is None:  # layers only: a container's output is its last layer's
            for tensor in output if isinstance(output, tuple | list) else (output,):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()

    handle = torch.nn.modules.module.register_module_forward_hook(add)
    try:
        with torch.no_grad():
            net(torch.empty(batch, conv.in_channels, max(1, size // scale), max(1, size // scale), device="meta"))
    except Exception:  # a forward that needs real values: no estimate
        return 0
    finally:
        handle.remove()
    return total


def _machine_memory() -> int | None:
    """This machine's memory in bytes (the container's limit where lower); None where it cannot be read."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file, encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            memory = min(memory, int(text))
    return memory


def _memory_text(count: float) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _check_network_memory(
    opt: Mapping[str, Any], networks: Mapping[str, torch.nn.Module], source: str, is_train: bool
) -> None:
    """The networks (sized on the meta device) fit this machine's memory: their weights, and on a CPU run
    the training copies and one batch's activations."""
    memory = _machine_memory()
    if memory is None or not networks:
        return
    weights = {key: sum(p.numel() * p.element_size() for p in net.parameters()) for key, net in networks.items()}
    if opt["model_type"] == "ERLModel" and hasattr(networks.get("network_g"), "backbone"):
        teacher = networks["network_g"].backbone  # the teacher is one more backbone
        weights["network_g"] += sum(p.numel() * p.element_size() for p in teacher.parameters())
    largest = max(weights, key=weights.get)
    on_cpu = opt.get("num_gpu") == 0 or torch.cuda.device_count() == 0
    if not (is_train and on_cpu):  # BasicSR builds every network on the CPU before moving it
        if sum(weights.values()) > memory:
            raise OptionsError(
                f"{source}: {largest}: the networks' weights take {_memory_text(sum(weights.values()))} but this "
                f"machine has {_memory_text(memory)} of memory; {_smaller(largest, opt[largest])}"
            )
        return
    activations = _activation_bytes(networks["network_g"], opt) if "network_g" in networks else 0
    need = _TRAINING_COPIES * sum(weights.values()) + activations
    if need > memory:
        batch = (
            f", plus {_memory_text(activations)} of layer outputs for a batch of datasets.train.batch_size_per_gpu "
            "crops of datasets.train.gt_size"
            if activations
            else ""
        )
        raise OptionsError(
            f"{source}: {largest}: training on the CPU needs about {_memory_text(need)} ({_TRAINING_COPIES} copies "
            f"of {_memory_text(sum(weights.values()))} of weights: weights, gradients and Adam's two moments{batch}) "
            f"but this machine has {_memory_text(memory)} of memory; {_smaller(largest, opt[largest])}"
            f"{', or the batch or the crops' if activations else ''}"
        )


def validate_options(opt: Mapping[str, Any], source: str, is_train: bool) -> None:
    """Check what BasicSR would otherwise fail on deep inside its pipeline, before anything is created.

    Section by section: every rule of the schema (:data:`erl_plugin.engine.schema.SCHEMA`: sections that
    must be mappings, numbers and their ranges, a plain experiment name) and the model type; the networks
    (:func:`_check_networks`); the datasets (:func:`_check_datasets`); what the model type itself reads,
    through its ``check_options`` (ERLModel: its stages, teacher and every stage's optimizer); the speed
    options (:mod:`erl_plugin.utils.speed`); validation (:func:`_check_validation`).

    Raises:
        OptionsError: naming ``source``, the key and what is allowed.
    """
    for key in ["name", "model_type", "datasets", "path"] + (["train"] if is_train else []):
        if key not in opt:
            required = ", ".join(["name", "model_type", "datasets", "path"] + (["train"] if is_train else []))
            raise OptionsError(f"{source}: missing top-level key {key!r} (required: {required})")
    check_schema(opt, source)
    _check_registered(opt["model_type"], MODEL_REGISTRY, "model_type", "model", source)
    _check_devices(opt, source)
    networks = _check_networks(opt, source, is_train)
    _check_datasets(opt, source, is_train)
    _check_model(opt, networks, is_train, source)
    _check_speed(opt, source)
    _check_validation(opt, source, is_train)


def _check_networks(opt: Mapping[str, Any], source: str, is_train: bool) -> dict[str, torch.nn.Module]:
    """Every ``network_*``: registered, within the size budget and this machine's memory (sized on the meta
    device first), built from its options, and fitting its pretrained checkpoint. Returns the networks."""
    keys = [key for key in opt if key.startswith("network_")]
    if not keys:
        raise OptionsError(f"{source}: no network_* section (e.g. network_g: {{type: MEMD}})")
    for key in keys:
        if "type" not in opt[key]:
            raise OptionsError(f"{source}: {key}: expected a mapping with a 'type' key")
        _check_registered(opt[key]["type"], ARCH_REGISTRY, f"{key}.type", "network", source)
    # Sized without memory first, so that a huge network is refused before anything real is built.
    sized = {key: _meta_network(key, opt[key], source) for key in keys}
    _check_network_memory(opt, {key: net for key, net in sized.items() if net is not None}, source, is_train)
    built: dict[str, torch.nn.Module] = {}
    for key in keys:
        try:
            with _parameter_budget(MAX_NETWORK_PARAMETERS):
                built[key] = _build_network(opt[key])
        except _TooLarge:
            raise _too_large(key, opt[key], source) from None
        except (TypeError, ValueError, KeyError, ImportError) as error:  # ImportError: an optional dependency
            raise OptionsError(f"{source}: {key}: {error}") from None
        _check_checkpoint_fits(built[key], opt.get("path") or {}, key.removeprefix("network_"), source)
    return built


def _check_datasets(opt: Mapping[str, Any], source: str, is_train: bool) -> None:
    """Every dataset phase: a registered type, its own keys, paths that exist, and what its files say
    (:func:`erl_plugin.data.dataset_check.check_dataset`); the training set and iteration count."""
    datasets = opt["datasets"]
    if not isinstance(datasets, dict) or not datasets:
        raise OptionsError(f"{source}: datasets: expected a mapping of phases (train, val, test_1, ...)")
    for phase, dataset in datasets.items():
        if not isinstance(dataset, dict) or "type" not in dataset:
            raise OptionsError(f"{source}: datasets.{phase}: expected a mapping with a 'type' key")
        _check_registered(dataset["type"], DATASET_REGISTRY, f"datasets.{phase}.type", "dataset", source)
        own_keys = getattr(DATASET_REGISTRY.get(dataset["type"]), "OPTION_KEYS", None)
        if own_keys is not None:
            try:
                check_keys(dataset["type"], dataset, own_keys)
            except ValueError as error:
                raise OptionsError(f"{source}: datasets.{phase}: {error}") from None
        for key, value in dataset.items():
            if key.startswith("dataroot") or key in ("meta_info_file", "pair_list"):
                _check_path(value, f"datasets.{phase}.{key}", source)
    for key, value in (opt["path"] or {}).items():
        if key.startswith("pretrain_network_"):
            _check_path(value, f"path.{key}", source)
    for phase, dataset in datasets.items():
        try:
            check_dataset(dataset, phase, is_train, opt.get("scale", 1))
        except DatasetCheckError as error:
            raise OptionsError(f"{source}: datasets.{phase}: {error}") from None
    if is_train:
        if "train" not in datasets:
            raise OptionsError(f"{source}: datasets.train is missing (the training set; phases: {', '.join(datasets)})")
        if "total_iter" not in (opt["train"] or {}):
            raise OptionsError(f"{source}: train.total_iter is missing")


def _check_validation(opt: Mapping[str, Any], source: str, is_train: bool) -> None:
    """``val``: its frequency when a validation set exists, registered metrics and protocols, ``save_img``
    (and ``suffix`` for saved test images)."""
    val = opt.get("val") or {}
    if is_train and val and "val_freq" not in val and any(p.split("_")[0] == "val" for p in opt["datasets"]):
        raise OptionsError(f"{source}: val.val_freq is missing (how often to validate, in iterations)")
    for name, metric in (val.get("metrics") or {}).items():
        where = f"val.metrics.{name}"
        if not isinstance(metric, dict) or metric.get("type") not in METRIC_REGISTRY:
            kind = metric.get("type") if isinstance(metric, dict) else metric
            raise OptionsError(
                f"{source}: {where}.type: {kind!r} is not a registered metric; registered: "
                f"{_registered(METRIC_REGISTRY)}"
            )
        if metric["type"] in ("protocol_psnr", "protocol_ssim"):
            try:
                check_protocol(metric.get("protocol", "basicsr"))
            except ValueError as error:
                raise OptionsError(f"{source}: {where}.protocol: {error}") from None
    if val and "save_img" not in val:
        raise OptionsError(f"{source}: val.save_img is missing (BasicSR reads it at every validation; save_img: false)")
    if not is_train and val.get("save_img") and "suffix" not in val:
        raise OptionsError(f"{source}: val.suffix is missing (needed when val.save_img is true; `suffix: ~`)")
