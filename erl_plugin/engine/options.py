"""Reading, overriding and checking BasicSR options files before BasicSR sees them.

BasicSR fails deep inside its pipeline on a misspelt network type or a missing dataset path, and
its ``--force_yml`` applies overrides with ``exec``. Our entry points load the file here, apply
``--set key.sub=value`` overrides (values parsed as YAML, no code runs), check it, and hand BasicSR
the result.
"""

import copy
import importlib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from erl_plugin.data.dataset_check import DatasetCheckError, check_dataset
from erl_plugin.data.dataset_keys import check_keys
from erl_plugin.metrics.protocols import check_protocol
from erl_plugin.models.derain_model import DerainModel
from erl_plugin.models.erl_model import check_optimizers
from erl_plugin.models.stages import StageError, parse_stages
from erl_plugin.utils.checkpoint import CheckpointError, load_fitting, load_weights
from erl_plugin.utils.speed import check_speed_options, requested_speed_options


class OptionsError(ValueError):
    """An options file or override that cannot work; the message names the file and the key."""


def load_yaml(path: str, kind: str) -> Any:
    """Read a YAML file safely; raise :class:`OptionsError` naming it if missing or malformed.

    Args:
        path: The file.
        kind: What the file holds, for messages (``options``, ``models``, ...).
    """
    if not os.path.isfile(path):
        raise OptionsError(f"{path}: {kind} file not found")
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.safe_load(handle)
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


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _parse_value(text: str) -> Any:
    """A YAML value, where ``4e-4`` is a float (YAML 1.1 would read it as a string); a quoted value stays a string."""
    value = yaml.safe_load(text)
    quoted = text.strip()[:1] in ("'", '"')
    if isinstance(value, str) and not quoted and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def apply_overrides(opt: Mapping[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Return a copy of ``opt`` with ``key.sub=value`` overrides applied.

    The key must exist; prefix it with ``+`` to add a new one (``+path.pretrain_network_g=x.pth``).
    Values are YAML scalars or flow collections (``4e-4``, ``true``, ``[1, 2]``, ``null``).

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


ITERS_SCALE_ENV = "ERL_PLUGIN_ITERS_SCALE"


def requested_iters_scale(flag: float | None) -> tuple[float | None, str]:
    """The iteration scale asked for and where it came from: ``--iters-scale``, else the environment.

    ``ERL_PLUGIN_ITERS_SCALE=F`` shortens every training command (``erl-train``, ``python -m
    erl_plugin.train``, torchrun's workers, BasicSR's ``train.py``, the study) without editing it.

    Raises:
        OptionsError: the variable is set to something that is not a number > 0.
    """
    if flag is not None:
        return flag, f"--iters-scale {flag:g}"
    text = os.environ.get(ITERS_SCALE_ENV, "").strip()
    if not text:
        return None, ""
    try:
        factor = float(text)
    except ValueError:
        factor = None
    if factor is None or not factor > 0:
        raise OptionsError(f"{ITERS_SCALE_ENV}={text!r}: expected a number > 0 (e.g. 0.01), or unset")
    return factor, f"{ITERS_SCALE_ENV}={text}"


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


def scale_iterations(opt: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """A copy of ``opt`` with every iteration count multiplied by ``factor`` (rounded, at least 1).

    Scaled together: ``train.total_iter``, ``train.stage_iters`` (or the ``iters`` of each of
    ``train.stages``), the milestones, periods and (PlateauLR) patience of ``train.scheduler`` and of
    every ``train.stage_options.<stage>.scheduler``, ``val.val_freq``, ``logger.save_checkpoint_freq``
    and ``logger.print_freq``. ``total_iter`` becomes the sum of the
    scaled stages when there are stages, so the two always agree.
    """
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
        raise OptionsError(f"iters_scale {factor!r} must be a number > 0")
    result = copy.deepcopy(dict(opt))

    def scaled(value: Any) -> int:
        return max(1, round(float(value) * factor))

    for section, key in _ITER_KEYS:
        if key in (result.get(section) or {}):
            result[section][key] = scaled(result[section][key])
    train = result.get("train") or {}
    if train.get("stage_iters"):
        train["stage_iters"] = [scaled(v) for v in train["stage_iters"]]
        train["total_iter"] = sum(train["stage_iters"])
    stages = train.get("stages")
    if (
        isinstance(stages, list)
        and stages
        and all(isinstance(s, dict) and isinstance(s.get("iters"), int) for s in stages)
    ):
        for stage in stages:
            stage["iters"] = scaled(stage["iters"])
        train["total_iter"] = sum(stage["iters"] for stage in stages)
    schedulers = [train.get("scheduler")] + [s.get("scheduler") for s in (train.get("stage_options") or {}).values()]
    schedulers += [s.get("scheduler") for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []
    for scheduler in schedulers:
        for key in ("milestones", "periods"):
            if scheduler and scheduler.get(key):
                scheduler[key] = [scaled(v) for v in scheduler[key]]
        if scheduler and isinstance(scheduler.get("patience"), int):
            scheduler["patience"] = scaled(scheduler["patience"])
    return result


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


def _check_count(opt: Mapping[str, Any], section: str, key: str, source: str) -> None:
    """An optional positive integer option, such as ``logger.keep_last``."""
    value = (opt.get(section) or {}).get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise OptionsError(f"{source}: {section}.{key}: {value!r} must be a positive integer (or absent)")


def _check_path(value: Any, where: str, source: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not os.path.exists(os.path.expanduser(value)):
        raise OptionsError(
            f"{source}: {where}: {value!r} does not exist (relative paths are resolved from {os.getcwd()})"
        )


def _check_checkpoint_fits(
    net: torch.nn.Module, path: Mapping[str, Any], suffix: str, source: str, what: str | None = None
) -> None:
    """Load ``path.pretrain_network_<suffix>`` into ``net`` as BasicSR will, failing with the key."""
    key = f"pretrain_network_{suffix}"
    checkpoint = path.get(key)
    if not isinstance(checkpoint, str) or not os.path.isfile(os.path.expanduser(checkpoint)):
        return  # a missing file is reported by the path checks
    try:
        params = load_weights(os.path.expanduser(checkpoint), path.get(f"param_key_{suffix}", "params"))
    except CheckpointError as error:  # a corrupt or unsafe file
        raise OptionsError(f"{source}: path.{key}: {checkpoint} cannot be loaded as weights: {error}") from None
    try:
        load_fitting(net, params, strict=path.get(f"strict_load_{suffix}", True))
    except ValueError as error:
        raise OptionsError(
            f"{source}: path.{key}: {checkpoint} does not fit {what or f'network_{suffix}'}: {error}"
        ) from None


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


def _check_iterations(value: Any, where: str, source: str) -> None:
    """An iteration count: a positive whole number (``!!float 2e4`` included)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1 or value != int(value):
        raise OptionsError(f"{source}: {where}: {value!r} must be a positive whole number of iterations")


def _check_numbers(opt: Mapping[str, Any], source: str) -> None:
    """Learning rates, weight decays and loss weights are numbers; YAML reads ``1e-3`` as a string."""
    train = opt.get("train") or {}
    stages = train.get("stages") if isinstance(train.get("stages"), list) else []
    sections = {
        "train": train,
        **{f"train.stage_options.{k}": v for k, v in (train.get("stage_options") or {}).items()},
        **{f"train.stages[{i}]": v for i, v in enumerate(stages) if isinstance(v, Mapping)},
    }
    for prefix, section in sections.items():
        for group, keys in (
            ("optim_g", ("lr", "weight_decay")),
            ("pixel_opt", ("loss_weight",)),
            ("feature_opt", ("loss_weight",)),
        ):
            values = (section or {}).get(group) or {}
            for key in keys:
                value = values.get(key) if isinstance(values, Mapping) else None
                if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
                    continue
                where = f"{prefix}.{group}.{key}"
                if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
                    raise OptionsError(
                        f"{source}: {where}: {value!r} is a string (YAML 1.1 reads 1e-3 without a dot as text); "
                        f"write {float(value):.1e} or !!float {value}"
                    )
                raise OptionsError(f"{source}: {where}: {value!r} must be a number")


def _check_devices(opt: Mapping[str, Any], source: str) -> None:
    """``num_gpu`` asks for no more CUDA devices than this machine has."""
    wanted = opt.get("num_gpu", "auto")
    if wanted == "auto" or wanted is None:
        return
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0:
        raise OptionsError(f"{source}: num_gpu: {wanted!r} must be auto or a whole number >= 0")
    present = torch.cuda.device_count()
    if wanted > present:
        raise OptionsError(
            f"{source}: num_gpu: {wanted} but this machine has {present} CUDA device(s); use num_gpu: 0 (the CPU), "
            f"auto, or at most {present}"
        )


def validate_options(opt: Mapping[str, Any], source: str, is_train: bool) -> None:
    """Check what BasicSR would otherwise fail on deep inside its pipeline.

    Checks the model, network and dataset types against BasicSR's registries, that each network
    builds from its options and takes its pretrained checkpoint, that every dataset path, meta-info
    file and pretrained network exists, that the sections the pipeline reads are present, an
    ERLModel's stages and teacher checkpoint, and the speed options (:mod:`erl_plugin.utils.speed`).

    Raises:
        OptionsError: naming ``source``, the key and what is allowed.
    """
    required = ["name", "model_type", "datasets", "path"] + (["train"] if is_train else [])
    for key in required:
        if key not in opt:
            raise OptionsError(f"{source}: missing top-level key {key!r} (required: {', '.join(required)})")
    if not isinstance(opt["name"], str) or not opt["name"]:
        raise OptionsError(
            f'{source}: name: {opt["name"]!r} must be a non-empty string (quote it: name: "{opt["name"]}")'
        )
    _check_registered(opt["model_type"], MODEL_REGISTRY, "model_type", "model", source)
    _check_devices(opt, source)
    networks = [key for key in opt if key.startswith("network_")]
    built: dict[str, torch.nn.Module] = {}
    if not networks:
        raise OptionsError(f"{source}: no network_* section (e.g. network_g: {{type: MEMD}})")
    for key in networks:
        section = opt[key]
        if not isinstance(section, dict) or "type" not in section:
            raise OptionsError(f"{source}: {key}: expected a mapping with a 'type' key")
        _check_registered(section["type"], ARCH_REGISTRY, f"{key}.type", "network", source)
        kwargs = {k: v for k, v in copy.deepcopy(section).items() if k != "type"}
        try:  # through the registry: basicsr's build_network would set up its logger before the pipeline does
            net = ARCH_REGISTRY.get(section["type"])(**kwargs)
        except (TypeError, ValueError, KeyError) as error:
            raise OptionsError(f"{source}: {key}: {error}") from None
        built[key] = net
        _check_checkpoint_fits(net, opt.get("path") or {}, key.removeprefix("network_"), source)
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
        _check_iterations(opt["train"]["total_iter"], "train.total_iter", source)
        _check_numbers(opt, source)
        val = opt.get("val") or {}
        if any(phase.split("_")[0] == "val" for phase in datasets) and val and "val_freq" not in val:
            raise OptionsError(f"{source}: val.val_freq is missing (how often to validate, in iterations)")
        if "val_freq" in val:
            _check_iterations(val["val_freq"], "val.val_freq", source)
    _check_count(opt, "logger", "keep_last", source)
    _check_count(opt, "train", "max_consecutive_nonfinite", source)
    if opt["model_type"] == "ERLModel":
        if opt["network_g"]["type"] != "ERLNet":
            raise OptionsError(f"{source}: network_g.type: ERLModel trains ERLNet, got {opt['network_g']['type']!r}")
        backbone = opt["network_g"]["backbone"]
        teacher = built["network_g"].new_backbone()
        _check_checkpoint_fits(teacher, opt["path"] or {}, "t", source, f"the teacher ({backbone['type']})")
    _check_speed(opt, source)
    if is_train and opt["model_type"] == "ERLModel":
        try:
            stages = parse_stages(opt)
        except StageError as error:
            raise OptionsError(f"{source}: {error}") from None
        if any("feature" in stage.losses for stage in stages) and getattr(teacher, "global_residual", False):
            raise OptionsError(
                f"{source}: network_g.backbone.global_residual: true, and a stage uses the feature loss: a "
                "clean-to-clean teacher that adds its input back learns the identity, so the embedding of a clean "
                "image tells the decoder there is no rain to remove and the feature loss pulls the wrong way "
                "(docs/study.md, the headroom table). Use global_residual: false (direct image output), or train "
                "without the feature loss"
            )
    if is_train:
        try:
            check_optimizers(opt)
        except ValueError as error:
            raise OptionsError(f"{source}: {error}") from None
    val = opt.get("val") or {}
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
