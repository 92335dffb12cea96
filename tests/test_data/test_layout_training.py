"""Every layout converts, reads back the same pairs from LMDB and from the original folder, and trains."""

from pathlib import Path

import pytest
import torch
from basicsr.data import build_dataset
from conftest import REPO, run_python, tiny_options, write_options
from test_create_lmdb import BUILDERS, _build

from erl_plugin.data import DerainPairedDataset
from erl_plugin.data.convert import convert_dataset
from erl_plugin.data.layouts import LAYOUTS
from erl_plugin.engine.options import load_options


def _convert(case: str, tmp_path: Path) -> tuple[str, Path, Path]:
    layout, src, _ = _build(case, tmp_path)
    dst = tmp_path / "lmdb"
    convert_dataset(layout, src, dst, progress=False)
    return layout, src, dst


def _lmdb_options(dst: Path) -> dict:
    return {"dataroot_lq": str(dst / "lq.lmdb"), "dataroot_gt": str(dst / "gt.lmdb"), "io_backend": {"type": "lmdb"}}


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_original_folder_and_converted_lmdb_give_the_same_pairs(tmp_path: Path, case: str) -> None:
    layout, src, dst = _convert(case, tmp_path)
    from_lmdb = DerainPairedDataset({**_lmdb_options(dst), "phase": "val"})
    from_folder = DerainPairedDataset({"layout": layout, "dataroot": str(src), "phase": "val"})
    assert len(from_lmdb) == len(from_folder) > 0
    for index in range(len(from_lmdb)):
        a, b = from_lmdb[index], from_folder[index]
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"]), (case, index)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_each_layout_trains_from_lmdb_and_validates_on_the_original_folder(tmp_path: Path, case: str) -> None:
    layout, src, dst = _convert(case, tmp_path)
    unused = {key: "" for key in ("train_lq", "train_gt", "test_lq", "test_gt")}
    opt = tiny_options(unused, name=f"layout_{case}", total_iter=2)
    opt["datasets"]["train"] = {
        **opt["datasets"]["train"],
        **_lmdb_options(dst),
        "type": "DerainPairedDataset",
        "gt_size": 8,
        "batch_size_per_gpu": 1,
    }
    opt["datasets"]["val"] = {"name": case, "type": "DerainPairedDataset", "layout": layout, "dataroot": str(src)}
    result = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "End of training" in result.stderr and f"Validation {case}" in result.stderr


BENCHMARK_OPTIONS = sorted((REPO / "options").glob("erl_rain100h.yml")) + sorted(
    (REPO / "options/benchmarks").glob("*.yml")
)


@pytest.mark.parametrize("path", BENCHMARK_OPTIONS, ids=lambda p: p.name)
def test_benchmark_options_build_their_datasets_on_fixtures(tmp_path: Path, path: Path) -> None:
    opt = load_options(str(path))
    datasets = opt["datasets"]
    train, held, test = dict(datasets["train"]), dict(datasets["val"]), dict(datasets["val_2"])
    # a fixture of the same layout function (rain200l reads like rain200h)
    case = next(name for name, (layout, _) in sorted(BUILDERS.items()) if LAYOUTS[layout] is LAYOUTS[test["layout"]])
    _, src, dst = _convert(case, tmp_path)
    test.update(dataroot=str(src), phase="val")
    every = {**train, **_lmdb_options(dst), "phase": "train", "gt_size": 8}
    every.pop("hold_out")
    assert len(build_dataset(every)) == len(build_dataset(test)) > 0
    # PlateauLR's set: the same training pairs, the held-out share (the split itself: test_derain_dataset.py)
    assert train["hold_out"]["keep"] == "rest" and held["hold_out"] == {**train["hold_out"], "keep": "held"}
    sources = ("layout", "dataroot", "dataroot_lq", "dataroot_gt", "pair_list", "io_backend")
    assert {k: train.get(k) for k in sources} == {k: held.get(k) for k in sources}
