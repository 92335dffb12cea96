"""The options schema, the strict YAML loader, ``--set`` values, the experiment name, environment values and the
network-size check: every careless value is refused with a message naming the key, the value and what is allowed.
"""

import copy
import math
import re
import resource
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import plateau_options, tiny_options
from test_models.test_erl_training import erl_options

import erl_plugin  # noqa: F401  (registers the networks and datasets)
from erl_plugin.engine import options as options_module
from erl_plugin.engine.entry import check_launcher, set_cpu_threads
from erl_plugin.engine.options import (
    MAX_NETWORK_PARAMETERS,
    OptionsError,
    apply_overrides,
    load_options,
    requested_iters_scale,
    scale_iterations,
    validate_options,
)
from erl_plugin.engine.schema import ENVIRONMENT, INTEGER, SCHEMA, WHOLE, Rule, matches, read_environment
from erl_plugin.engine.strict_yaml import MAX_ALIAS_NODES

NUMERIC_RULES = [rule for rule in SCHEMA if rule.numeric]
PLATEAU_KEYS = {"factor", "patience", "min_gain", "max_reductions"}
COSINE_KEYS = {"periods", "restart_weights", "eta_min"}


def follows(rule: Rule, value: Any) -> bool:
    """What the table says of ``value``, read from the rule's declared fields (not from its own check)."""
    if value is None:
        return rule.nullable
    if any(value == other and type(value) is type(other) for other in rule.also):
        return True
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if (rule.kind == INTEGER and not isinstance(value, int)) or (rule.kind == WHOLE and value != int(value)):
        return False
    if rule.low is not None and (value <= rule.low if rule.open_low else value < rule.low):
        return False
    return rule.high is None or (value < rule.high if rule.open_high else value <= rule.high)


def inside(rule: Rule) -> int | float:
    """A value inside the rule's range."""
    low = rule.low if rule.low is not None else 0
    value = low + 1 if rule.high is None else (low + rule.high) / 2
    return int(value) if rule.kind in (INTEGER, WHOLE) else value


def _scheduler(key: str) -> dict[str, Any]:
    """A valid scheduler of the type that reads ``key``."""
    if key in PLATEAU_KEYS:
        return {"type": "PlateauLR", "metric": "psnr", "patience": 200, "min_gain": 0.1, "max_reductions": 1}
    if key in COSINE_KEYS:
        return {"type": "CosineAnnealingRestartLR", "periods": [4], "restart_weights": [1], "eta_min": 1e-7}
    return {"type": "MultiStepLR", "milestones": [1000], "gamma": 0.5}


def base_for(rule: Rule, data: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Valid training options in which ``rule.path`` exists, and the concrete path of the value."""
    path = rule.path.replace("datasets.*", "datasets.train").replace("optim_*", "optim_g").replace("*_opt", "pixel_opt")
    key = path.rsplit(".", 1)[-1]
    if "stage_options" in path or "stages[" in path or key == "stage_iters":
        opt = erl_options(data, "schema", [1, 1, 1, 1])
        if "stages[" in path:
            for drop in ("strategy", "stage_iters", "stage_options"):
                del opt["train"][drop]
            opt["train"]["stages"] = [
                {"name": "only", "iters": 4, "train": ["main_encoder", "decoder"], "losses": ["pixel"]}
            ]
            path = path.replace("stages[*]", "stages[0]")
        path = path.replace("stage_options.*", "stage_options.stage2")
    elif ".scheduler." in path and key in PLATEAU_KEYS:
        opt = plateau_options(data, "schema", 2)
    else:
        opt = tiny_options(data, name="schema")
    if ".scheduler." in path:
        _put(opt, path.rsplit(".", 1)[0], _scheduler(key))
    if path.startswith("dist_params"):
        opt["dist_params"] = {"backend": "gloo", "port": 29500}
    return opt, path


def _put(opt: dict[str, Any], path: str, value: Any) -> None:
    node: Any = opt
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    node[parts[-1]] = value


@pytest.mark.parametrize("rule", NUMERIC_RULES, ids=lambda rule: rule.path)
def test_every_numeric_option_refuses_or_accepts_as_its_rule_states(rule: Rule, tiny_lmdb: dict[str, str]) -> None:
    base, path = base_for(rule, tiny_lmdb)
    for value in (0, -1, math.inf, math.nan, "abc", None, True, inside(rule)):
        opt = copy.deepcopy(base)
        if rule.each:
            written = value if value in ("abc", None) else ([value, 0.999] if rule.length == 2 else [value])
            expected = value not in ("abc", None) and follows(rule, value)
        else:
            written, expected = value, follows(rule, value)
        _put(opt, path, written)
        assert [where for where, _ in matches(opt, rule.path)] == [path]  # the value sits where the rule looks
        try:
            validate_options(opt, "x.yml", is_train=True)
        except OptionsError as error:
            message = str(error)
            if expected:  # refused, but by another check (the stages' sum, the devices): never by this rule
                assert not message.startswith(f"x.yml: {path}: {written!r} must be"), message
            else:
                assert message.startswith(f"x.yml: {path}: {written!r} must be {rule.allowed}"), message
        else:
            assert expected, f"{path}: {written!r} was accepted; the rule allows {rule.allowed}"


def test_the_table_covers_what_basicsr_and_the_plugin_read() -> None:
    paths = {rule.path for rule in SCHEMA}
    for stage in ("train", "train.stage_options.*", "train.stages[*]"):
        for key in ("optim_*.lr", "optim_*.betas", "optim_*.weight_decay", "scheduler.gamma", "scheduler.milestones"):
            assert f"{stage}.{key}" in paths
    assert {
        "datasets.*.batch_size_per_gpu",
        "datasets.*.num_worker_per_gpu",
        "datasets.*.dataset_enlarge_ratio",
        "datasets.*.gt_size",
        "manual_seed",
        "num_gpu",
        "train.total_iter",
        "train.warmup_iter",
        "train.ema_decay",
        "train.*_opt.loss_weight",
        "val.val_freq",
        "logger.print_freq",
        "logger.save_checkpoint_freq",
        "logger.keep_last",
        "train.max_consecutive_nonfinite",
        "train",
        "val",
        "logger",
        "path",
        "datasets",
        "datasets.*",
        "network_*",
    } <= paths


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1e-3", "train.optim_g.lr: '1e-3' is a string (YAML 1.1 reads 1e-3 without a dot as text); write 1.0e-03"),
        ("abc", "train.optim_g.lr: 'abc' must be a number > 0"),
        (math.inf, "train.optim_g.lr: inf must be a number > 0, and finite"),
    ],
)
def test_messages_name_the_key_the_value_and_what_is_allowed(tiny_lmdb: dict[str, str], value: Any, message: str):
    opt = tiny_options(tiny_lmdb)
    opt["train"]["optim_g"]["lr"] = value
    with pytest.raises(OptionsError, match=f"^x.yml: {re.escape(message)}"):
        validate_options(opt, "x.yml", is_train=True)


@pytest.mark.parametrize("section", ["train", "val", "logger", "path", "datasets", "network_g"])
@pytest.mark.parametrize("value", [None, 5, "text", [1, 2]])
def test_a_section_replaced_by_a_non_mapping_is_named(tiny_lmdb: dict[str, str], section: str, value: Any) -> None:
    opt = apply_overrides(tiny_options(tiny_lmdb), [f"{section}={value if value is not None else 'null'}"], "x.yml")
    if section == "val" and value is None:  # null: no validation, as BasicSR reads it
        validate_options(opt, "x.yml", is_train=True)
        return
    with pytest.raises(OptionsError, match=f"^x.yml: {section}: {re.escape(repr(value))} must be a mapping"):
        validate_options(opt, "x.yml", is_train=True)


@pytest.mark.parametrize("name", ["../lmdb", "/abs/path", "a/b", "a\\b", ".hidden", "..", " padded"])
def test_the_experiment_name_is_a_plain_name(tiny_lmdb: dict[str, str], name: str) -> None:
    opt = tiny_options(tiny_lmdb, name=name)
    with pytest.raises(OptionsError, match=f"^x.yml: name: {re.escape(repr(name))} must be a plain name"):
        validate_options(opt, "x.yml", is_train=True)


def test_plain_names_are_accepted_and_an_empty_one_is_not(tiny_lmdb: dict[str, str]) -> None:
    for name in ("memd_r2_s0", "run 2 (retry)", "débit"):
        validate_options(tiny_options(tiny_lmdb, name=name), "x.yml", is_train=True)
    with pytest.raises(OptionsError, match="name: '' must be a non-empty string"):
        validate_options(tiny_options(tiny_lmdb, name=""), "x.yml", is_train=True)


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "opt.yml"
    path.write_text("name: a\nnetwork_g:\n  type: MEMD\ntrain:\n  optim_g: {lr: 1, lr: 2}\nnetwork_g: {type: X}\n")
    with pytest.raises(OptionsError) as error:
        load_options(str(path))
    assert str(error.value).startswith(f"{path}: refused: network_g is set twice, at line 2 and line 6")
    path.write_text("train:\n  optim_g:\n    lr: 1\n    weight_decay: 0\n    lr: 2\n")
    with pytest.raises(OptionsError, match="train.optim_g.lr is set twice, at line 3 and line 5"):
        load_options(str(path))


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "opt.yml"
    path.write_text("base: &base {lr: 1, betas: [0.9, 0.99]}\noptim_g:\n  <<: *base\n  lr: 2\n")
    assert load_options(str(path))["optim_g"] == {"lr": 2, "betas": [0.9, 0.99]}


def test_an_alias_bomb_is_refused_without_expanding(tmp_path: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level, previous in zip("bcdefghijk", "abcdefghij", strict=True):
        lines.append(f"{level}: &{level} [{', '.join([f'*{previous}'] * 9)}]")  # 9^11 strings once expanded
    path = tmp_path / "opt.yml"
    path.write_text("\n".join(lines) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(OptionsError, match=f"^{re.escape(str(path))}: refused: its aliases"):
        load_options(str(path))
    assert time.perf_counter() - started < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing was expanded


def test_a_few_aliases_load_and_a_self_reference_does_not(tmp_path: Path) -> None:
    path = tmp_path / "opt.yml"
    path.write_text(f"x: &x [{', '.join(['1'] * (MAX_ALIAS_NODES // 4))}]\ny: *x\nz: *x\n")
    assert load_options(str(path))["z"] == [1] * (MAX_ALIAS_NODES // 4)
    path.write_text("x: &x [1, *x]\n")
    with pytest.raises(OptionsError, match="refused: an alias refers to the node .line 1. that contains it"):
        load_options(str(path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train=optim_g: {lr: 1}", "expected one value on one line"),
        ("train.total_iter=- 1\n- 2", "expected one value on one line"),
        ("name=|\n  text", "expected one value on one line"),
        ("train.total_iter=--- 1\n--- 2", "expected one value, not several YAML documents"),
    ],
)
def test_set_takes_one_value_not_a_block_of_yaml(override: str, message: str) -> None:
    with pytest.raises(OptionsError, match=f"^--set {re.escape(repr(override))}: {message}"):
        apply_overrides({"name": "a", "train": {"total_iter": 1}}, [override], "x.yml")


def test_set_takes_flow_collections_and_scalars() -> None:
    opt = apply_overrides(
        {"train": {"a": 1, "b": 1, "c": 1}}, ["train.a={x: [1, 2]}", "train.b=[1,\n 2]", "train.c=null"], "x.yml"
    )
    assert opt["train"] == {"a": {"x": [1, 2]}, "b": [1, 2], "c": None}


def test_scaling_leaves_what_is_not_a_number_for_the_schema(tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb)
    opt["train"]["scheduler"]["milestones"] = "abc"
    opt["logger"] = None
    scaled = scale_iterations(opt, 0.5)
    assert scaled["train"]["scheduler"]["milestones"] == "abc" and scaled["train"]["total_iter"] == 1
    with pytest.raises(OptionsError, match="^x.yml: logger: None must be a mapping"):
        validate_options(scaled, "x.yml", is_train=True)
    with pytest.raises(OptionsError, match="iters_scale 1e\\+308: 2 iterations scaled by it is not a finite number"):
        scale_iterations(tiny_options(tiny_lmdb), 1e308)


@pytest.mark.parametrize("flag", [math.inf, math.nan, 0.0, -1.0])
def test_iters_scale_flag_must_be_finite_and_positive(flag: float) -> None:
    with pytest.raises(OptionsError, match=f"^--iters-scale: {flag!r} must be a number > 0"):
        requested_iters_scale(flag)


@pytest.mark.parametrize("rule", ENVIRONMENT.values(), ids=lambda rule: rule.path)
def test_every_environment_value_is_checked_by_its_rule(rule: Rule, monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("0", "-1", "inf", "nan", "abc", "1", "2"):
        monkeypatch.setenv(rule.path, text)
        value: Any = int(text) if text.lstrip("-").isdigit() else float(text) if text != "abc" else text
        if follows(rule, value):
            assert read_environment(rule.path) == ([value] if rule.each else value)
        else:
            expected = f"{rule.path}={text!r}: expected {rule.allowed}"
            with pytest.raises(OptionsError, match=f"^{re.escape(expected)}"):
                read_environment(rule.path)
    monkeypatch.setenv(rule.path, " ")
    assert read_environment(rule.path) is None


@pytest.mark.parametrize("text", ["ten", "inf", "nan", "0", "-1"])
def test_a_bad_iters_scale_variable_is_named(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERL_PLUGIN_ITERS_SCALE", text)
    with pytest.raises(OptionsError, match=f"^ERL_PLUGIN_ITERS_SCALE='{text}': expected a number > 0"):
        requested_iters_scale(None)


@pytest.mark.parametrize(
    ("name", "text"), [("LOCAL_WORLD_SIZE", "two"), ("LOCAL_WORLD_SIZE", "0"), ("OMP_NUM_THREADS", "x")]
)
def test_thread_variables_are_checked(name: str, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(OptionsError, match=f"^{name}='{text}': expected a "):
        set_cpu_threads(None)


def test_a_launcher_without_its_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    check_launcher("none")
    with pytest.raises(OptionsError, match="^--launcher pytorch: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set"):
        check_launcher("pytorch")
    with pytest.raises(OptionsError, match="^--launcher slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST not set"):
        check_launcher("slurm")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(OptionsError, match="^--launcher pytorch: RANK=2 must be below WORLD_SIZE=2"):
        check_launcher("pytorch")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_PORT", "99999")
    with pytest.raises(OptionsError, match=r"^MASTER_PORT='99999': expected an integer in \[1, 65535\]"):
        check_launcher("pytorch")
    monkeypatch.setenv("MASTER_PORT", "29500")
    check_launcher("pytorch")


def test_a_huge_network_is_refused_without_allocating_it(tiny_lmdb: dict[str, str]) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for erl in (False, True):
        opt = erl_options(tiny_lmdb, "huge", [1, 1, 1, 1]) if erl else tiny_options(tiny_lmdb)
        backbone = opt["network_g"]["backbone"] if erl else opt["network_g"]
        backbone["num_down"] = 40
        started = time.perf_counter()
        with pytest.raises(OptionsError) as error:
            validate_options(opt, "x.yml", is_train=True)
        assert time.perf_counter() - started < 5
        assert str(error.value).startswith(f"x.yml: network_g: builds more than {MAX_NETWORK_PARAMETERS:,} parameters")
        assert "num_down: 40" in str(error.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_a_network_larger_than_the_machine_is_refused(tiny_lmdb: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(options_module, "_machine_memory", lambda: 2**20)  # a machine of 1 MiB
    opt = tiny_options(tiny_lmdb)
    opt["network_g"].update(num_feat=16)
    with pytest.raises(
        OptionsError, match="^x.yml: network_g: training on the CPU needs about .* but this machine has"
    ):
        validate_options(opt, "x.yml", is_train=True)
    test_opt = {key: value for key, value in opt.items() if key != "train"}
    monkeypatch.setattr(options_module, "_machine_memory", lambda: 2**10)
    with pytest.raises(OptionsError, match="^x.yml: network_g: the networks' weights take"):
        validate_options(test_opt, "x.yml", is_train=False)
