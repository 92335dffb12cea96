"""What each option and environment variable may hold: one table of rules, checked before anything is built.

:data:`SCHEMA` lists a :class:`Rule` per option path that BasicSR or the plugin reads in training
and test options: the sections that must be mappings, and every number with its type and range.
:func:`check_schema` applies the table to an options dict; :data:`ENVIRONMENT` and
:func:`read_environment` do the same for the environment variables the package reads. Each
refusal names the key path, the value and what is allowed::

    x.yml: train.optim_g.lr: inf must be a number > 0, and finite
    x.yml: datasets.train.batch_size_per_gpu: 0 must be a positive integer

A path is dotted keys; ``*`` in a key matches any key of that mapping (``optim_*``: ``optim_g``,
``optim_d``), and ``[*]`` any item of a list (``train.stages[*]``). The optimizer and scheduler rules
hold for the whole run (``train``) and for each stage (``train.stage_options.<stage>`` and
``train.stages[i]``).
"""

import fnmatch
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


class OptionsError(ValueError):
    """An options file or override that cannot work; the message names the file and the key."""


MAPPING = "mapping"
NUMBER = "number"
"""A finite int or float (never a bool)."""
INTEGER = "integer"
"""An int (never a bool or a float)."""
WHOLE = "whole"
"""A finite whole number, int or float: an iteration count written ``!!float 2e4`` is one."""
FLAG = "flag"
TEXT = "text"
"""A non-empty string."""
NAME = "name"
"""The experiment's name: a plain folder name (``experiments/<name>``, ``results/<name>``)."""

FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A string that looks like a number: YAML 1.1 reads ``1e-3`` (no dot) as text."""


@dataclass(frozen=True)
class Rule:
    """What one option (or every item of a list option) may hold.

    Args:
        path: Where: dotted keys, with ``*`` for any key (or part of one) and ``[*]`` for any list item.
        kind: :data:`MAPPING`, :data:`NUMBER`, :data:`INTEGER`, :data:`WHOLE`, :data:`FLAG`,
            :data:`TEXT` or :data:`NAME`.
        low: The smallest value allowed (None: no bound).
        high: The largest value allowed (None: no bound).
        open_low: ``low`` itself is excluded (``> 0`` rather than ``>= 0``).
        open_high: ``high`` itself is excluded.
        each: The option is a list and the rule holds for each item.
        length: With ``each``, the number of items the list must have.
        nullable: ``null`` (None) is allowed too.
        also: Other values allowed besides those of ``kind`` (``auto`` for ``num_gpu``).
        note: Said after what is allowed (what null means, an example).
    """

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    each: bool = False
    length: int | None = None
    nullable: bool = False
    also: tuple[Any, ...] = ()
    note: str = ""

    @property
    def numeric(self) -> bool:
        return self.kind in (NUMBER, INTEGER, WHOLE)

    @property
    def allowed(self) -> str:
        """What the option may hold, in words (``a number > 0``, ``a list of positive integers``)."""
        one = self._one_allowed(plural=self.each)
        text = (f"a list of {self.length} {one}" if self.length else f"a list of {one}") if self.each else one
        text = " or ".join([*map(str, self.also), text]) if self.also else text
        if self.nullable:
            text += ", or null"
        return f"{text} ({self.note})" if self.note else text

    def _one_allowed(self, plural: bool) -> str:
        s, a = ("s", "") if plural else ("", "a ")
        if self.kind == WHOLE and self.low == 1 and self.high is None:
            return f"{a}positive whole number{s} of iterations"
        if self.kind == INTEGER and self.low == 1 and self.high is None:
            return f"{a}positive integer{s}"
        noun = {
            MAPPING: "mapping",
            NUMBER: "number",
            INTEGER: "integer",
            WHOLE: "whole number",
            FLAG: "true or false",
            TEXT: "non-empty string",
            NAME: "plain name",
        }[self.kind]
        if self.kind == FLAG:
            return noun
        article = "" if plural else ("an " if noun[0] in "aeiou" else "a ")
        return f"{article}{noun}{s}{self._range()}"

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f" in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f" {'>' if self.open_low else '>='} {_number(self.low)}"
        if self.high is not None:
            return f" {'<' if self.open_high else '<='} {_number(self.high)}"
        return ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, as ``<value> must be <allowed>``; None when it follows the rule."""
        if (value is None and self.nullable) or any(value == v and type(value) is type(v) for v in self.also):
            return None
        if self.each:
            items_ok = isinstance(value, list | tuple) and (self.length is None or len(value) == self.length)
            if items_ok and all(self._item_problem(item) is None for item in value):
                return None
            return f"{value!r} must be {self.allowed}"
        return self._item_problem(value)

    def _item_problem(self, value: Any) -> str | None:
        if self.kind == MAPPING:
            return None if isinstance(value, Mapping) else f"{value!r} must be {self.allowed}"
        if self.kind == FLAG:
            return None if isinstance(value, bool) else f"{value!r} must be {self.allowed}"
        if self.kind == TEXT:
            return None if isinstance(value, str) and value.strip() else f"{value!r} must be {self.allowed}"
        if self.kind == NAME:
            return _name_problem(value)
        if isinstance(value, str) and self.kind != INTEGER and FLOAT_TEXT.fullmatch(value.strip()):
            number = float(value)
            written = f"{number:.1e}" if self.kind == NUMBER else f"{number:.0f}"
            if self.kind == WHOLE and number != int(number):
                return f"{value!r} must be {self.allowed}"
            return (
                f"{value!r} is a string (YAML 1.1 reads 1e-3 without a dot as text); write {written} or !!float {value}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{value!r} must be {self.allowed}"
        if not math.isfinite(value):
            return f"{value!r} must be {self.allowed}, and finite"
        if (self.kind == INTEGER and not isinstance(value, int)) or (self.kind == WHOLE and value != int(value)):
            return f"{value!r} must be {self.allowed}"
        below = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        return f"{value!r} must be {self.allowed}" if below or above else None


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _name_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f'{value!r} must be a non-empty string (quote it: name: "{value}")'
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if value.strip() != value or value.startswith(".") or any(s in value for s in separators) or "\0" in value:
        return (
            f"{value!r} must be a plain name: it names the folders experiments/<name> and results/<name>, so no "
            "'/' or '\\', not starting with '.' (no '..'), no leading or trailing spaces"
        )
    return None


# The optimizer, scheduler and loss of the run, and of each stage of an ERLModel (stages override
# only the optimizer and the scheduler).
_RUN = ("train",)
_STAGES = ("train", "train.stage_options.*", "train.stages[*]")


def _per_stage(prefixes: tuple[str, ...], key: str, kind: str, **limits: Any) -> tuple[Rule, ...]:
    return tuple(Rule(f"{prefix}.{key}", kind, **limits) for prefix in prefixes)


SCHEMA: tuple[Rule, ...] = (
    # Sections: mappings when present (null: BasicSR runs no validation without val).
    Rule("name", NAME),
    Rule("datasets", MAPPING),
    Rule("datasets.*", MAPPING),
    Rule("datasets.*.io_backend", MAPPING),
    Rule("network_*", MAPPING),
    Rule("path", MAPPING),
    Rule("train", MAPPING),
    Rule("val", MAPPING, nullable=True, note="no validation"),
    Rule("val.metrics", MAPPING, nullable=True),
    Rule("logger", MAPPING),
    Rule("logger.wandb", MAPPING, nullable=True),
    Rule("dist_params", MAPPING),
    Rule("train.stage_options", MAPPING, nullable=True),
    Rule("train.stage_options.*", MAPPING, nullable=True),
    *_per_stage(_STAGES, "optim_*", MAPPING),
    *_per_stage(_STAGES, "scheduler", MAPPING),
    Rule("train.*_opt", MAPPING, nullable=True),
    # The run.
    Rule("manual_seed", INTEGER, low=0, high=2**32 - 1, nullable=True, note="BasicSR then picks one"),
    Rule("num_gpu", INTEGER, low=0, also=("auto",)),
    Rule("scale", INTEGER, low=1),
    Rule("dist_params.port", INTEGER, low=1, high=65535),
    Rule("network_g.backbone.checkpoint", TEXT, note="a pretrained restorer's checkpoint file"),
    # Datasets.
    Rule("datasets.*.batch_size_per_gpu", INTEGER, low=1),
    Rule("datasets.*.num_worker_per_gpu", INTEGER, low=0),
    Rule("datasets.*.dataset_enlarge_ratio", INTEGER, low=1),
    Rule("datasets.*.gt_size", INTEGER, low=1),
    # Training.
    Rule("train.total_iter", WHOLE, low=1),
    Rule("train.stage_iters", INTEGER, low=0, each=True, note="0 skips stage1 when the backbone is already trained"),
    Rule("train.warmup_iter", INTEGER, low=-1, note="-1: no warm-up"),
    Rule("train.ema_decay", NUMBER, low=0, high=1, open_high=True, note="0: no EMA"),
    Rule("train.max_consecutive_nonfinite", INTEGER, low=1, nullable=True),
    *_per_stage(_STAGES, "optim_*.lr", NUMBER, low=0, open_low=True),
    *_per_stage(_STAGES, "optim_*.betas", NUMBER, low=0, high=1, open_high=True, each=True, length=2),
    *_per_stage(_STAGES, "optim_*.weight_decay", NUMBER, low=0),
    # Schedulers: MultiStepLR / MultiStepRestartLR, CosineAnnealingRestartLR, PlateauLR.
    *_per_stage(_STAGES, "scheduler.gamma", NUMBER, low=0, open_low=True),
    *_per_stage(_STAGES, "scheduler.milestones", WHOLE, low=1, each=True),
    *_per_stage(_STAGES, "scheduler.restarts", WHOLE, low=0, each=True),
    *_per_stage(_STAGES, "scheduler.periods", WHOLE, low=1, each=True),
    *_per_stage(_STAGES, "scheduler.restart_weights", NUMBER, low=0, open_low=True, each=True),
    *_per_stage(_STAGES, "scheduler.eta_min", NUMBER, low=0),
    *_per_stage(_STAGES, "scheduler.metric", TEXT),
    *_per_stage(_STAGES, "scheduler.factor", NUMBER, low=0, high=1, open_low=True, open_high=True),
    *_per_stage(_STAGES, "scheduler.patience", INTEGER, low=1),
    *_per_stage(_STAGES, "scheduler.min_gain", NUMBER, low=0),
    *_per_stage(_STAGES, "scheduler.max_reductions", INTEGER, low=0),
    *_per_stage(_STAGES, "scheduler.stop", FLAG),
    *_per_stage(_RUN, "*_opt.loss_weight", NUMBER, low=0),
    # Validation and logging.
    Rule("val.val_freq", WHOLE, low=1),
    Rule("logger.print_freq", WHOLE, low=1),
    Rule("logger.save_checkpoint_freq", WHOLE, low=1),
    Rule("logger.keep_last", INTEGER, low=1, nullable=True, note="keep all"),
)
"""Every rule, sections first (a value is checked only inside a section that is a mapping)."""

_SEGMENT = re.compile(r"[^.\[\]]+|\[\*\]")


def _segments(path: str) -> list[str]:
    return _SEGMENT.findall(path)


def matches(opt: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every ``(where, value)`` that ``path`` (with ``*`` and ``[*]``) names in ``opt``, in the options' order."""

    def walk(node: Any, segments: list[str], where: str) -> Iterator[tuple[str, Any]]:
        if not segments:
            yield where, node
            return
        head, rest = segments[0], segments[1:]
        if head == "[*]":
            if isinstance(node, list):
                for index, item in enumerate(node):
                    yield from walk(item, rest, f"{where}[{index}]")
            return
        if not isinstance(node, Mapping):
            return
        keys = [k for k in node if isinstance(k, str) and fnmatch.fnmatchcase(k, head)] if "*" in head else [head]
        for key in keys:
            if key in node:
                yield from walk(node[key], rest, f"{where}.{key}" if where else key)

    yield from walk(opt, _segments(path), "")


def check_schema(opt: Mapping[str, Any], source: str) -> None:
    """Apply every rule of :data:`SCHEMA` to ``opt``.

    Raises:
        OptionsError: ``<source>: <key path>: <value> must be <what is allowed>``, for the first
            value that breaks its rule.
    """
    for rule in SCHEMA:
        for where, value in matches(opt, rule.path):
            problem = rule.problem(value)
            if problem is not None:
                raise OptionsError(f"{source}: {where}: {problem}")


ITERS_SCALE_ENV = "ERL_PLUGIN_ITERS_SCALE"

ENVIRONMENT: dict[str, Rule] = {
    rule.path: rule
    for rule in (
        Rule(ITERS_SCALE_ENV, NUMBER, low=0, open_low=True, note="e.g. 0.01"),
        Rule("OMP_NUM_THREADS", INTEGER, low=1, each=True, note="comma-separated for nested levels"),
        Rule("LOCAL_WORLD_SIZE", INTEGER, low=1),
        Rule("LOCAL_RANK", INTEGER, low=0),
        Rule("RANK", INTEGER, low=0),
        Rule("WORLD_SIZE", INTEGER, low=1),
        Rule("MASTER_PORT", INTEGER, low=1, high=65535),
        Rule("SLURM_PROCID", INTEGER, low=0),
        Rule("SLURM_NTASKS", INTEGER, low=1),
    )
}
"""The numeric environment variables the package reads (or hands to torch.distributed), with their rules."""


def read_environment(name: str) -> Any:
    """The value of environment variable ``name`` under its rule in :data:`ENVIRONMENT`; None when unset or empty.

    An ``each`` rule reads a comma-separated list and returns it as a list.

    Raises:
        OptionsError: ``NAME='text': expected <what is allowed>, or unset``.
    """
    rule = ENVIRONMENT[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    parts = [part.strip() for part in text.split(",")] if rule.each else [text]
    values: list[Any] = []
    for part in parts:
        try:
            values.append(int(part) if rule.kind == INTEGER else float(part))
        except ValueError:
            values.append(part)
    value = values if rule.each else values[0]
    if rule.problem(value) is not None:
        infinite = any(isinstance(v, float) and not math.isfinite(v) for v in values)
        raise OptionsError(f"{name}={text!r}: expected {rule.allowed}{', finite' if infinite else ''}, or unset")
    return value
