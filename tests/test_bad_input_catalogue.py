"""A catalogue of a careless user's mistakes: every one stops with a named error and harms nothing.

Each case builds its inputs in a fresh folder, runs one entry point as a user would (``erl-train``,
``erl-test``, a tool), and asserts the exit status (2), an ``error:`` line naming the key, file or
value and what is allowed, no traceback, every file in the folder unchanged (SHA-256 before and
after), and no output left behind (no experiment folder: the mistake is caught before BasicSR
creates one).
"""

import copy
import hashlib
import shutil
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
        _tool("create_lmdb.py", "pairs", "lmdb", "--layout", "pairs"), "(--overwrite) to replace it", absent=[]
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


CASES = {**{f"options: {k}": v for k, v in OPTIONS.items()}, **{f"data: {k}": v for k, v in DATA.items()}}
CASES.update({f"tools: {k}": v for k, v in TOOLS.items()})


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
