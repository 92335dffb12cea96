"""A catalogue of a careless user's mistakes: every one stops with a named error and harms nothing.

Each case builds its inputs in a fresh folder, runs one entry point as a user would (``erl-train``,
``erl-test``, a tool), and asserts the exit status (2), an ``error:`` line naming the key, file or
value and what is allowed, no traceback, every file in the folder unchanged (SHA-256 before and
after), and no output left behind (no experiment folder: the mistake is caught before BasicSR
creates one).
"""

import copy
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_python, tiny_options
from test_models.test_erl_training import erl_options

from erl_plugin.archs import MEMD

TRAIN = ["-m", "erl_plugin.train", "-opt", "opt.yml"]
TEST = ["-m", "erl_plugin.test", "-opt", "opt.yml"]
TINY_NET = {"num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


@dataclass
class Case:
    """One mistake: the command, what it must answer, and what must not exist afterwards."""

    args: list[str]
    message: str  # a substring of stderr
    absent: list[str] = field(default_factory=lambda: ["experiments", "results", "tb_logger"])
    code: int = 2


class World:
    """A user's folder: tiny LMDBs and image folders, and the options they edit."""

    def __init__(self, root: Path, tiny_lmdb: dict[str, str]) -> None:
        self.root = root
        self.lmdb = {}
        for key, path in tiny_lmdb.items():  # copies: some cases damage them
            split, side = key.split("_")
            self.lmdb[key] = str(root / "lmdb" / split / f"{side}.lmdb")
            shutil.copytree(path, self.lmdb[key])
        rng = np.random.default_rng(0)
        for side in ("input", "target"):
            (root / "pairs" / side).mkdir(parents=True)
        for index in range(3):
            clean = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "pairs/target" / f"{index}.png"), clean)
            cv2.imwrite(str(root / "pairs/input" / f"{index}.png"), 255 - clean)

    def options(self, erl: bool = False) -> dict[str, Any]:
        return erl_options(self.lmdb, "erl", [1, 1, 1, 1]) if erl else tiny_options(self.lmdb, name="careless")

    def write(self, opt: dict[str, Any], name: str = "opt.yml") -> None:
        (self.root / name).write_text(yaml.safe_dump(copy.deepcopy(opt), sort_keys=False))

    def train(self, edit: Callable[[dict[str, Any]], None], erl: bool = False, message: str = "") -> Case:
        opt = self.options(erl)
        edit(opt)
        self.write(opt)
        return Case(TRAIN, message)

    def checkpoint(self, name: str, **net: int) -> str:
        torch.manual_seed(0)
        path = self.root / name
        torch.save({"params": MEMD(**{**TINY_NET, **net}).state_dict()}, path)
        return str(path)

    def derain_options(self, erl: bool = False) -> str:
        network = {"type": "MEMD", **TINY_NET}
        if erl:
            network = {"type": "ERLNet", "backbone": network, "entangle": "mlgd"}
        (self.root / "net.yml").write_text(yaml.safe_dump({"network_g": network}))
        return str(self.root / "net.yml")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets ``a.b.c`` (creating sections) to ``value``."""

    def edit(opt: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = opt
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(opt: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = opt
        for key in parents:
            node = node[key]
        del node[last]

    return edit


def _train_on(section: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(opt: dict[str, Any]) -> None:
        opt["datasets"]["train"] = {**opt["datasets"]["train"], **section}

    return edit


def _pairs_section(world: World, lq: str, gt: str) -> dict[str, Any]:
    return {
        "type": "DerainPairedDataset",
        "dataroot_lq": str(world.root / lq),
        "dataroot_gt": str(world.root / gt),
        "io_backend": {"type": "disk"},
        "gt_size": 32,
        "use_hflip": True,
        "use_rot": False,
    }


def _meta(world: World, key: str, text: str) -> None:
    (Path(world.lmdb[key]) / "meta_info.txt").write_text(text)


def _tool(name: str, *args: str) -> list[str]:
    return [str(REPO / "tools" / name), *args]


# Options: every value a careless edit produces.
OPTIONS: dict[str, Callable[[World], Case]] = {
    "lr written 1e-3": lambda w: w.train(_set("train.optim_g.lr", "1e-3"), message="write 1.0e-03 or !!float 1e-3"),
    "lr not a number": lambda w: w.train(
        _set("train.optim_g.lr", "abc"), message="train.optim_g.lr: 'abc' must be a number"
    ),
    "total_iter 0": lambda w: w.train(_set("train.total_iter", 0), message="train.total_iter: 0 must be a positive"),
    "total_iter negative": lambda w: w.train(_set("train.total_iter", -5), message="train.total_iter: -5 must be"),
    "no training set": lambda w: w.train(_drop("datasets.train"), message="datasets.train is missing"),
    "no val_freq": lambda w: w.train(_drop("val.val_freq"), message="val.val_freq is missing"),
    "num_gpu above devices": lambda w: w.train(_set("num_gpu", 1), message="num_gpu: 1 but this machine has 0 CUDA"),
    "numeric name": lambda w: w.train(_set("name", 123), message="name: 123 must be a non-empty string"),
    "unknown network": lambda w: w.train(_set("network_g.type", "MEMDD"), message="network_g.type: 'MEMDD'"),
    "unknown model": lambda w: w.train(_set("model_type", "SRModle"), message="model_type: 'SRModle'"),
    "unknown metric": lambda w: w.train(
        _set("val.metrics.psnr.type", "psnr"), message="'psnr' is not a registered metric"
    ),
    "network option typo": lambda w: w.train(_set("network_g.num_fet", 4), message="num_fet"),
    "missing data path": lambda w: w.train(
        _set("datasets.train.dataroot_lq", "nowhere.lmdb"), message="datasets.train.dataroot_lq"
    ),
    "scheduler missing": lambda w: w.train(_drop("train.scheduler"), message="train.scheduler is missing"),
    "optimizer BasicSR cannot build": lambda w: w.train(_set("train.optim_g.type", "SGD"), message="builds Adam only"),
    "stage iterations do not add up": lambda w: w.train(
        _set("train.stage_iters", [1, 1, 1]), erl=True, message="train.stage_iters"
    ),
    "bad lr in a later stage only": lambda w: w.train(
        _set("train.stage_options.stage3", {"optim_g": {"lr": "abc"}}),
        erl=True,
        message="train.stage_options.stage3.optim_g.lr: 'abc' must be a number",
    ),
    "bad scheduler in a later stage only": lambda w: w.train(
        _set("train.stage_options.stage3", {"scheduler": {"type": "StepLR"}}),
        erl=True,
        message="stage 'stage3': scheduler.type: 'StepLR'; allowed: MultiStepLR",
    ),
    "bad scheduler value in a later stage": lambda w: w.train(
        _set("train.stage_options.stage2", {"scheduler": {"milestones": [1], "gama": 0.5}}),
        erl=True,
        message="stage 'stage2': scheduler:",
    ),
    "unknown strategy": lambda w: w.train(_set("train.strategy", "MA_E"), erl=True, message="'MA_E' is not a strategy"),
    "python tag in options": lambda w: _python_tag(w),
    "checkpoint that does not fit": lambda w: w.train(
        _set("path.pretrain_network_g", w.checkpoint("wide.pth", num_feat=8)), message="wide.pth"
    ),
    "checkpoint that is not one": lambda w: _garbage_checkpoint(w),
    "test options without suffix": lambda w: _test_without_suffix(w),
}


def _python_tag(w: World) -> Case:
    w.write(w.options())
    text = (w.root / "opt.yml").read_text().replace("name: careless", "name: !!python/object/apply:os.getcwd []")
    (w.root / "opt.yml").write_text(text)
    return Case(TRAIN, "opt.yml")


def _garbage_checkpoint(w: World) -> Case:
    (w.root / "garbage.pth").write_bytes(b"not a checkpoint")
    return w.train(_set("path.pretrain_network_g", str(w.root / "garbage.pth")), message="garbage.pth")


def _test_without_suffix(w: World) -> Case:
    opt = w.options()
    opt["datasets"] = {"test_1": opt["datasets"]["val"]}
    opt["path"]["pretrain_network_g"] = w.checkpoint("net.pth")
    opt["val"]["save_img"] = True
    del opt["train"]
    w.write(opt)
    return Case(TEST, "val.suffix is missing")


# Data: what the files say, found before the experiment folder exists.
def _folders(w: World) -> World:
    shutil.copytree(w.root / "pairs/target", w.root / "copy_of_target")
    (w.root / "empty/input").mkdir(parents=True)
    (w.root / "empty/target").mkdir(parents=True)
    (w.root / "not_lmdb").mkdir()
    cv2.imwrite(str(w.root / "not_lmdb/0000.png"), np.zeros((8, 8, 3), np.uint8))
    return w


DATA: dict[str, Callable[[World], Case]] = {
    "rainy root is the clean root": lambda w: w.train(
        _train_on(_pairs_section(w, "pairs/target", "pairs/target")), message="one folder"
    ),
    "rainy images are copies of the clean": lambda w: _folders(w).train(
        _train_on(_pairs_section(w, "copy_of_target", "pairs/target")), message="identical rainy and clean"
    ),
    "same LMDB for both sides": lambda w: w.train(
        _set("datasets.train.dataroot_lq", w.lmdb["train_gt"]), message="dataroot_lq and dataroot_gt are one"
    ),
    "empty folders": lambda w: _folders(w).train(
        _train_on(_pairs_section(w, "empty/input", "empty/target")), message="empty/input"
    ),
    "a folder read as an LMDB": lambda w: _folders(w).train(
        _set("datasets.train.dataroot_lq", str(w.root / "not_lmdb")), message="not_lmdb is not an LMDB"
    ),
    "meta_info lists a missing key": lambda w: _meta_edit(w, "0000.png (48,48,3) 1\nghost.png (48,48,3) 1\n", "ghost"),
    "meta_info malformed": lambda w: _meta_edit(w, "0000.png 48x48\n", "expected '<key>.png (h,w,c) <level>'"),
    "meta_info keys differ between sides": lambda w: _meta_edit(
        w, "".join(f"{i:04d}.png (48,48,3) 1\n" for i in range(5)), "list different keys"
    ),
    "pairs of different sizes": lambda w: _meta_edit(
        w, "".join(f"{i:04d}.png ({24 if i == 0 else 48},48,3) 1\n" for i in range(6)), "different sizes"
    ),
    "crop larger than the images": lambda w: w.train(_set("datasets.train.gt_size", 64), message="gt_size: 64 but"),
    "misspelt dataset key": lambda w: w.train(
        _train_on({**_pairs_section(w, "pairs/input", "pairs/target"), "gt_szie": 32}), message="gt_szie"
    ),
    "a file only decoding finds broken": lambda w: _broken_while_training(w),
    "unknown layout": lambda w: w.train(
        _train_on({"type": "DerainPairedDataset", "layout": "rain101h", "dataroot": str(w.root / "pairs")}),
        message="rain101h",
    ),
}


def _broken_while_training(w: World) -> Case:
    """Found at its first read, after training started: one line naming the file, exit 2, no traceback."""
    (w.root / "pairs/input/1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    case = w.train(_train_on(_pairs_section(w, "pairs/input", "pairs/target")), message="pairs/input/1.png")
    case.absent = []  # the experiment folder exists: training had started
    return case


def _meta_edit(w: World, text: str, message: str) -> Case:
    _meta(w, "train_lq", text)
    w.write(w.options())
    return Case(TRAIN, message)


# Tools: outputs onto inputs, identity data, networks that are not what the label says.
def _same(w: World) -> str:
    shutil.copytree(w.root / "pairs/target", w.root / "same/input")
    shutil.copytree(w.root / "pairs/target", w.root / "same/target")
    return "same"


def _erl_model(w: World, checkpoint: str) -> list[str]:
    return ["--model", "ERL-Net", w.derain_options(erl=True), checkpoint]


TOOLS: dict[str, Callable[[World], Case]] = {
    "create_lmdb onto its source": lambda w: Case(
        _tool("create_lmdb.py", "pairs", "pairs", "--layout", "pairs", "--overwrite"), "the input", absent=[]
    ),
    "create_lmdb inside its source": lambda w: Case(
        _tool("create_lmdb.py", "pairs", "pairs/out", "--layout", "pairs"), "the input", absent=["pairs/out"]
    ),
    "create_lmdb over an existing folder": lambda w: Case(
        _tool("create_lmdb.py", "pairs", "lmdb", "--layout", "pairs"), "pass --overwrite to replace it", absent=[]
    ),
    "create_lmdb of identical sides": lambda w: Case(
        _tool("create_lmdb.py", "pairs", "out", "--layout", "pairs", "--lq-dir", "target"),
        "identical rainy and clean files",
        absent=["out"],
    ),
    "create_lmdb with the wrong layout": lambda w: Case(
        _tool("create_lmdb.py", "pairs", "out", "--layout", "rain100h"), "use --layout rain13k", absent=["out"]
    ),
    "create_lmdb of a corrupt image": lambda w: _corrupt_conversion(w),
    "evaluate on identical sides": lambda w: Case(
        _tool(
            "evaluate.py",
            "--model",
            "MEMD",
            w.derain_options(),
            w.checkpoint("m.pth"),
            "--data",
            _same(w),
            "--out",
            "o",
        ),
        "identical rainy and clean",
        absent=["o"],
    ),
    "evaluate a teacher as ERL-Net": lambda w: Case(
        _tool("evaluate.py", *_erl_model(w, w.checkpoint("net_t_teacher.pth")), "--data", "pairs", "--out", "o"),
        "net_t_teacher.pth is ERL-Net's teacher",
        absent=["o"],
    ),
    "evaluate into the data": lambda w: Case(
        _tool("evaluate.py", *_erl_model(w, w.checkpoint("m.pth")), "--data", "pairs", "--out", "pairs/o"),
        "the input",
        absent=["pairs/o"],
    ),
    "evaluate a folder no layout reads": lambda w: Case(
        _tool("evaluate.py", *_erl_model(w, w.checkpoint("m.pth")), "--data", "not_a_set", "--out", "o"),
        "tried rain100h",
        absent=["o"],
    ),
    "derain without a checkpoint": lambda w: Case(
        _tool("derain.py", "--opt", w.derain_options(), "--input", "pairs/input", "--output", "out"),
        "give --checkpoint FILE, or set path.pretrain_network_g",
        absent=["out"],
    ),
    "derain into its input folder": lambda w: Case(
        _tool(
            "derain.py",
            "--opt",
            w.derain_options(),
            "--checkpoint",
            w.checkpoint("m.pth"),
            "--input",
            "pairs/input",
            "--output",
            "pairs",
        ),
        "the input",
        absent=[],
    ),
    "derain with a teacher": lambda w: Case(
        _tool(
            "derain.py",
            "--opt",
            w.derain_options(erl=True),
            "--checkpoint",
            w.checkpoint("net_t_9.pth"),
            "--input",
            "pairs/input",
            "--output",
            "out",
        ),
        "never learnt to derain",
        absent=["out"],
    ),
    "analyze on identical sides": lambda w: Case(
        _tool("analyze.py", "pairs/target", "pairs/input", "--data", _same(w), "--out", "analysis"),
        "identical rainy and clean",
        absent=["analysis"],
    ),
    "leaderboard with an unknown protocol": lambda w: _leaderboard(w, w.checkpoint("m.pth")),
    "synthesize rain onto its photos": lambda w: Case(
        _tool("synthesize_rain.py", "--source", "pairs/target", "--out", "pairs", "--overwrite"), "the input", absent=[]
    ),
}


def _corrupt_conversion(w: World) -> Case:
    (w.root / "pairs/input/1.png").write_bytes(b"\x89PNG broken")
    return Case(_tool("create_lmdb.py", "pairs", "out", "--layout", "pairs"), "1.png", absent=["out"])


def _leaderboard(w: World, checkpoint: str) -> Case:
    (w.root / "models.yml").write_text(
        yaml.safe_dump([{"name": "M", "options": w.derain_options(), "checkpoint": checkpoint}])
    )
    (w.root / "sets.yml").write_text(yaml.safe_dump([{"name": "P", "dataroot": str(w.root / "pairs")}]))
    args = ["--models", "models.yml", "--testsets", "sets.yml", "--out", "board", "--protocols", "psnr"]
    return Case(_tool("leaderboard.py", *args), "'psnr'", absent=["board"])


# Entry: weights and images checked where they enter, before they can derain to black or train on NaN.
def _poisoned_checkpoint(w: World, value: float = float("nan")) -> tuple[str, str]:
    """The tiny MEMD's checkpoint with one non-finite weight: its path and the key of that tensor."""
    torch.manual_seed(0)
    params = MEMD(**TINY_NET).state_dict()
    key = [name for name, tensor in params.items() if tensor.is_floating_point()][2]
    params[key].view(-1)[0] = value
    torch.save({"params": params}, w.root / "poisoned.pth")
    return str(w.root / "poisoned.pth"), key


def _poisoned_derain(w: World) -> Case:
    checkpoint, key = _poisoned_checkpoint(w)
    args = ["--opt", w.derain_options(), "--checkpoint", checkpoint, "--input", "pairs/input", "--output", "out"]
    return Case(_tool("derain.py", *args), f"{checkpoint}: tensor params.{key} holds 1 NaN", absent=["out"])


def _poisoned_evaluate(w: World) -> Case:
    checkpoint, key = _poisoned_checkpoint(w, float("inf"))
    args = ["--model", "MEMD", w.derain_options(), checkpoint, "--data", "pairs", "--out", "o"]
    return Case(
        _tool("evaluate.py", *args), f"{checkpoint}: tensor params.{key} holds 0 NaN and 1 infinite", absent=["o"]
    )


def _poisoned_pretrain(w: World, suffix: str) -> Case:
    checkpoint, key = _poisoned_checkpoint(w)
    message = f"path.pretrain_network_{suffix}: {checkpoint} cannot be loaded as weights: network {checkpoint}: "
    return w.train(_set(f"path.pretrain_network_{suffix}", checkpoint), suffix == "t", f"{message}tensor params.{key}")


def _bomb(w: World, path: str) -> str:
    """Replace an image by a PNG header declaring 100000 x 100000 pixels (69 bytes): a decompression bomb."""
    from test_data.test_input_checks import png_declaring

    (w.root / path).write_bytes(png_declaring(100_000, 100_000))
    return f"{path} declares 100000x100000 pixels"


def _bomb_while_training(w: World) -> Case:
    """Found at its first read, after training started, as any broken file is."""
    case = w.train(_train_on(_pairs_section(w, "pairs/input", "pairs/target")), message=_bomb(w, "pairs/input/1.png"))
    case.absent = []  # the experiment folder exists: training had started
    return case


ENTRY: dict[str, Callable[[World], Case]] = {
    "derain with NaN weights": _poisoned_derain,
    "evaluate with infinite weights": _poisoned_evaluate,
    "NaN weights as pretrain_network_g": lambda w: _poisoned_pretrain(w, "g"),
    "NaN weights as pretrain_network_t": lambda w: _poisoned_pretrain(w, "t"),
    "create_lmdb of a decompression bomb": lambda w: Case(
        _tool("create_lmdb.py", "pairs", "out", "--layout", "pairs"), _bomb(w, "pairs/input/1.png"), absent=["out"]
    ),
    "a decompression bomb in a training folder, sizes read up front": lambda w: w.train(
        _train_on({**_pairs_section(w, "pairs/input", "pairs/target"), "small_images": "skip"}),
        message=_bomb(w, "pairs/input/1.png"),
    ),
    "a decompression bomb in a training folder": _bomb_while_training,
}

# Schema: values out of range, files that do not load as written, command lines and environments, names that are
# paths.
SCHEMA: dict[str, Callable[[World], Case]] = {
    "lr inf": lambda w: w.train(
        _set("train.optim_g.lr", float("inf")), message="train.optim_g.lr: inf must be a number > 0, and finite"
    ),
    "gamma -1": lambda w: w.train(
        _set("train.scheduler.gamma", -1), message="train.scheduler.gamma: -1 must be a number > 0"
    ),
    "milestones abc": lambda w: w.train(
        _set("train.scheduler.milestones", "abc"),
        message="train.scheduler.milestones: 'abc' must be a list of positive whole numbers of iterations",
    ),
    "network_g written twice": lambda w: _network_twice(w),
    "alias bomb": lambda w: _alias_bomb(w),
    "batch size 0": lambda w: w.train(
        _set("datasets.train.batch_size_per_gpu", 0),
        message="datasets.train.batch_size_per_gpu: 0 must be a positive integer",
    ),
    "batch size -1": lambda w: w.train(
        _set("datasets.train.batch_size_per_gpu", -1),
        message="datasets.train.batch_size_per_gpu: -1 must be a positive integer",
    ),
    "seed 1e23": lambda w: w.train(
        _set("manual_seed", 1e23), message="manual_seed: 1e+23 must be an integer in [0, 4294967295]"
    ),
    "num_down 40": lambda w: w.train(
        _set("network_g.num_down", 40), message="network_g: builds more than 500,000,000 parameters"
    ),
    "name ../lmdb": lambda w: w.train(_set("name", "../lmdb"), message="name: '../lmdb' must be a plain name"),
    "name an absolute folder": lambda w: w.train(
        _set("name", str(w.root / "pairs")), message=f"name: {str(w.root / 'pairs')!r} must be a plain name"
    ),
    "iters-scale inf": lambda w: _command(w, "--iters-scale", "inf", message="--iters-scale: inf must be a number > 0"),
    "set logger=null": lambda w: _command(w, "--set", "logger=null", message="logger: None must be a mapping"),
    "set a block of YAML": lambda w: _command(
        w, "--set", "train=total_iter: 5", message="expected one value on one line"
    ),
    "launcher pytorch outside torchrun": lambda w: _command(
        w, "--launcher", "pytorch", message="--launcher pytorch: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set"
    ),
    "ERL_PLUGIN_ITERS_SCALE text": lambda w: _with_environment(
        w, "ERL_PLUGIN_ITERS_SCALE", "ten", message="ERL_PLUGIN_ITERS_SCALE='ten': expected a number > 0"
    ),
    "ERL_PLUGIN_ITERS_SCALE nan": lambda w: _with_environment(
        w, "ERL_PLUGIN_ITERS_SCALE", "nan", message="ERL_PLUGIN_ITERS_SCALE='nan': expected a number > 0"
    ),
}


def _command(w: World, *args: str, message: str) -> Case:
    w.write(w.options())
    return Case([*TRAIN, *args], message)


def _with_environment(w: World, name: str, value: str, message: str) -> Case:
    """``erl-train`` with ``name=value`` in its environment (a case holds only the command line)."""
    w.write(w.options())
    code = (
        f"import os, runpy, sys; os.environ[{name!r}] = {value!r}; sys.argv = ['erl-train', *{TRAIN[2:]!r}]; "
        "runpy.run_module('erl_plugin.train', run_name='__main__', alter_sys=True)"
    )
    return Case(["-c", code], message)


def _network_twice(w: World) -> Case:
    w.write(w.options())
    text = (w.root / "opt.yml").read_text()
    first = text.splitlines().index("network_g:") + 1
    (w.root / "opt.yml").write_text(f"{text}network_g:\n  type: MEMD\n  num_feat: 8\n")
    second = len(text.splitlines()) + 1
    return Case(TRAIN, f"opt.yml: refused: network_g is set twice, at line {first} and line {second}")


def _alias_bomb(w: World) -> Case:
    w.write(w.options())
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9^10 once expanded
    with open(w.root / "opt.yml", "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return Case(TRAIN, "opt.yml: refused: its aliases (*name) expand to")


CASES = {**{f"options: {k}": v for k, v in OPTIONS.items()}, **{f"data: {k}": v for k, v in DATA.items()}}
CASES.update({f"tools: {k}": v for k, v in TOOLS.items()})
CASES.update({f"schema: {k}": v for k, v in SCHEMA.items()})
CASES.update({f"entry: {k}": v for k, v in ENTRY.items()})


# Writes: every output goes through one guarded path (erl_plugin/utils/outputs.py): never through a link,
# never over a file the tools did not write, one run per experiment.
def _linked(w: World, folder: str, name: str, target: str) -> str:
    """An output folder holding ``name`` as a symbolic link to ``target`` (an input, or a precious file)."""
    (w.root / folder).mkdir(parents=True, exist_ok=True)
    (w.root / folder / name).symlink_to(w.root / target)
    return folder


def _users_file(w: World, folder: str, name: str) -> str:
    (w.root / folder).mkdir(parents=True, exist_ok=True)
    (w.root / folder / name).write_text("the user's own notes")
    return folder


def _derain(w: World, output: str, *extra: str) -> list[str]:
    args = ["--opt", w.derain_options(), "--checkpoint", w.checkpoint("m.pth"), "--input", "pairs/input"]
    return _tool("derain.py", *args, "--output", output, *extra)


def _evaluate(w: World, out: str, *extra: str) -> list[str]:
    return _tool("evaluate.py", "--model", "MEMD", w.derain_options(), w.checkpoint("m.pth"), "--data", "pairs",
                 "--out", out, *extra)  # fmt: skip


def _held_experiment(w: World) -> Case:
    """Another live process holds the experiment's lock (this test process's pid stands for it)."""
    (w.root / "experiments").mkdir()
    record = {"owner": "erl_plugin", "pid": os.getpid(), "host": socket.gethostname(), "creates": []}
    (w.root / "experiments/careless.lock").write_text(json.dumps(record))
    case = w.train(lambda opt: None, message=f"another run (pid {os.getpid()}")
    case.absent = ["experiments/careless", "results", "tb_logger"]
    return case


def _lmdb_with_users_file(w: World) -> Case:
    made = run_python(_tool("create_lmdb.py", "pairs", "made", "--layout", "pairs", "--no-progress"), w.root)
    assert made.returncode == 0, made.stderr
    (w.root / "made/notes.txt").write_text("the user's notes, kept beside the LMDBs")
    args = _tool("create_lmdb.py", "pairs", "made", "--layout", "pairs", "--overwrite", "--no-progress")
    return Case(args, "notes.txt was not written by the tools", absent=[])


WRITES: dict[str, Callable[[World], Case]] = {
    "evaluate where scores.csv links to a checkpoint": lambda w: Case(
        _evaluate(w, _linked(w, "o", "scores.csv", "lmdb/train/gt.lmdb/data.mdb"), "--overwrite"),
        "scores.csv is a symbolic link",
        absent=[],
    ),
    "evaluate over the user's summary.md": lambda w: Case(
        _evaluate(w, _users_file(w, "o", "summary.md"), "--overwrite"), "was not written by the tools", absent=[]
    ),
    "evaluate into the current folder": lambda w: Case(_evaluate(w, "."), "holds the input", absent=[]),
    "derain over the user's image": lambda w: Case(
        _derain(w, _users_file(w, "out", "0.png")), "0.png exists and was not written by the tools", absent=[]
    ),
    "derain through a link to a file elsewhere": lambda w: Case(
        _derain(w, _linked(w, "out", "1.png", "lmdb/train/lq.lmdb/data.mdb"), "--overwrite"),
        "1.png is a symbolic link",
        absent=[],
    ),
    "a second run of a training experiment": _held_experiment,
    "create_lmdb --overwrite with the user's file inside": _lmdb_with_users_file,
}
CASES.update({f"writes: {k}": v for k, v in WRITES.items()})


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "lock.mdb" not in path.name
    }


@pytest.fixture
def world(tmp_path: Path, tiny_lmdb: dict[str, str]) -> World:
    (tmp_path / "not_a_set").mkdir()
    cv2.imwrite(str(tmp_path / "not_a_set/photo.png"), np.zeros((8, 8, 3), np.uint8))
    return World(tmp_path, tiny_lmdb)


def test_the_catalogue_covers_forty_mistakes() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_mistake_is_named_and_harms_nothing(world: World, name: str) -> None:
    case = CASES[name](world)
    before = _digests(world.root)
    result = run_python(case.args, world.root)
    assert result.returncode == case.code, result.stderr
    assert case.message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr  # after any progress bar
    after = _digests(world.root)
    assert {path: after.get(path) for path in before} == before  # every input as it was
    for path in case.absent:
        assert not (world.root / path).exists(), path


def _every_output_writer(w: World) -> dict[str, tuple[list[str], list[str]]]:
    """Each tool that writes files, run as a user would with --overwrite into ``o``: its command and the
    names it writes there."""
    for side in ("base", "erl"):
        shutil.copytree(w.root / "pairs/input", w.root / side)
    (w.root / "models.yml").write_text(
        yaml.safe_dump([{"name": "M", "options": w.derain_options(), "checkpoint": w.checkpoint("m.pth")}])
    )
    (w.root / "sets.yml").write_text(yaml.safe_dump([{"name": "P", "dataroot": str(w.root / "pairs")}]))
    images = ["0.png", "1.png", "2.png"]
    return {
        "evaluate": (_evaluate(w, "o", "--overwrite"), ["scores.csv", "summary.md", "comparison.png"]),
        "derain": (_derain(w, "o", "--overwrite", "--compare", "--score"), [*images, "0_compare.png", "niqe.csv"]),
        "export": (
            _tool(
                "export.py",
                "--opt",
                w.derain_options(),
                "--checkpoint",
                w.checkpoint("m.pth"),
                "--out",
                "o",
                "--format",
                "torchscript",
                "--overwrite",
            ),
            ["m.pt"],
        ),  # fmt: skip
        "analyze": (
            _tool("analyze.py", "base", "erl", "pairs/target", "pairs/input", "--out", "o", "--overwrite"),
            ["per_image.csv", "summary.md", "improvement.png", "hardest/0.png"],
        ),
        "leaderboard": (
            _tool("leaderboard.py", "--models", "models.yml", "--testsets", "sets.yml", "--out", "o", "--overwrite"),
            ["leaderboard.md", "leaderboard.csv"],
        ),
        "create_lmdb": (_tool("create_lmdb.py", "pairs", "o", "--layout", "pairs", "--overwrite"), ["meta_info.txt"]),
        "synthesize_rain": (
            _tool("synthesize_rain.py", "--source", "pairs/target", "--out", "o", "--overwrite"),
            images,
        ),
    }


@pytest.mark.parametrize(
    "tool", ["evaluate", "derain", "analyze", "leaderboard", "create_lmdb", "synthesize_rain", "export"]
)
def test_no_tool_writes_through_a_link_to_an_input(world: World, tool: str) -> None:
    """Property of the one write path: an output folder whose every output name is a link to an input (even
    listed in the tools' marker, as if an earlier run had written it) stops the tool with a named error, and
    every input, and every link, is as it was."""
    args, names = _every_output_writer(world)[tool]
    inputs = sorted(p for p in (world.root / "pairs").rglob("*") if p.is_file())
    for index, name in enumerate(names):
        link = world.root / "o" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(inputs[index % len(inputs)])
    (world.root / "o/.erl_plugin_output").write_text(json.dumps({"tool": tool, "files": names}))
    before = _digests(world.root)
    result = run_python(args, world.root)
    assert result.returncode == 2, result.stderr
    refusals = ("is a symbolic link", "was not written by the tools", "would overwrite an input")
    assert any(refusal in result.stderr for refusal in refusals), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert _digests(world.root) == before
    assert all((world.root / "o" / name).is_symlink() for name in names)
