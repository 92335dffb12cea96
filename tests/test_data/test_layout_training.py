"""Every layout converts, reads back the same pairs from LMDB and from the original folder, and trains."""

from pathlib import Path

import pytest
import torch
from conftest import run_python, tiny_options, write_options
from test_create_lmdb import BUILDERS, _build

from erl_plugin.data import DerainPairedDataset
from erl_plugin.data.convert import convert_dataset


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
