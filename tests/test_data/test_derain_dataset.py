"""Tests for erl_plugin.data.derain_dataset: folder and LMDB pairs, augmentation, conversions, errors."""

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.utils import get_root_logger

from erl_plugin.data import DerainPairedDataset
from erl_plugin.data.derain_dataset import ImageConversionWarning
from erl_plugin.data.images import ImageFileError
from erl_plugin.data.lmdb_writer import write_image_lmdb, write_paired_lmdb
from erl_plugin.data.pair_list import PairListError, write_pair_list


def _image(seed: int, height: int = 20, width: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    # cv2.imwrite cannot write non-ASCII paths on every platform; encode and write the bytes instead.
    ok, encoded = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(encoded.tobytes())
    return str(path)


def _rgb_tensor(image: np.ndarray) -> torch.Tensor:
    """What the dataset must return for a uint8 BGR image: RGB CHW float in [0, 1]."""
    return torch.from_numpy(image[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) / 255.0)


def _opt(lq: Any, gt: Any, **extra: Any) -> dict[str, Any]:
    return {"dataroot_lq": str(lq), "dataroot_gt": str(gt), "io_backend": {"type": "disk"}, "phase": "val", **extra}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """lq/gt folders with identical relative names, nested and with unicode + spaces."""
    lq, gt = tmp_path / "input", tmp_path / "target"
    names = ["a.png", os.path.join("sub", "deep", "b.jpg"), "régen tropfen 1.PNG"]
    images = {}
    for index, name in enumerate(names):
        paths = (_write(lq / name, _image(2 * index)), _write(gt / name, _image(2 * index + 1)))
        # JPEG is lossy: compare against what is on disk
        images[name] = tuple(cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) for path in paths)
    return lq, gt, images


@pytest.fixture
def many_to_one_lmdb(tmp_path: Path) -> dict[str, Any]:
    """DST/lq.lmdb (3 rainy), DST/gt.lmdb (1 clean), DST/pairs.txt, as the converter writes them."""
    clean = _image(10)
    rainy = [_image(11 + k) for k in range(3)]
    src = tmp_path / "src"
    gt_file = _write(src / "clean.png", clean)
    lq_items = [(f"r{k}", _write(src / f"rain_{k}.png", img)) for k, img in enumerate(rainy)]
    dst = tmp_path / "dst"
    write_image_lmdb(lq_items, dst / "lq.lmdb", progress=False)
    write_image_lmdb([("c0", gt_file)], dst / "gt.lmdb", progress=False)
    write_pair_list(dst / "pairs.txt", [(f"r{k}", "c0") for k in range(3)])
    return {"lq": str(dst / "lq.lmdb"), "gt": str(dst / "gt.lmdb"), "clean": clean, "rainy": rainy}


def test_folder_pairs_identical_names_nested_unicode(folders):
    lq, gt, images = folders
    dataset = DerainPairedDataset(_opt(lq, gt))
    assert len(dataset) == 3
    for item in dataset:
        name = os.path.relpath(item["lq_path"], lq)
        assert item["gt_path"] == os.path.join(str(gt), name)
        assert item["lq"].dtype == torch.float32 and item["lq"].shape == (3, 20, 24)
        torch.testing.assert_close(item["lq"], _rgb_tensor(images[name][0]))
        torch.testing.assert_close(item["gt"], _rgb_tensor(images[name][1]))


def test_options_are_not_mutated(folders):
    lq, gt, _ = folders
    opt = _opt(lq, gt, gt_size=8, phase="train")
    snapshot = repr(opt)
    DerainPairedDataset(opt)[0]
    assert repr(opt) == snapshot


def test_pair_list_many_to_one_folder(tmp_path):
    clean = _image(0)
    _write(tmp_path / "clean" / "norain 1.png", clean)
    for k in range(3):
        _write(tmp_path / "rainy" / "sub" / f"rain_1_{k}.png", _image(k + 1))
    write_pair_list(tmp_path / "pairs.txt", [(f"sub/rain_1_{k}.png", "norain 1.png") for k in range(3)])
    dataset = DerainPairedDataset(_opt(tmp_path / "rainy", tmp_path / "clean", pair_list=str(tmp_path / "pairs.txt")))
    assert len(dataset) == 3
    items = [dataset[k] for k in range(3)]
    for k, item in enumerate(items):
        torch.testing.assert_close(item["gt"], _rgb_tensor(clean))
        torch.testing.assert_close(item["lq"], _rgb_tensor(_image(k + 1)))
    assert len({item["lq_path"] for item in items}) == 3


def test_lmdb_pairs_txt_many_to_one(many_to_one_lmdb):
    data = many_to_one_lmdb
    dataset = DerainPairedDataset({"dataroot_lq": data["lq"], "dataroot_gt": data["gt"], "phase": "val"})
    assert len(dataset) == 3
    assert dataset.pairs == [("r0", "c0"), ("r1", "c0"), ("r2", "c0")]
    for k in range(3):
        item = dataset[k]
        assert (item["lq_path"], item["gt_path"]) == (f"r{k}", "c0")
        torch.testing.assert_close(item["lq"], _rgb_tensor(data["rainy"][k]))
        torch.testing.assert_close(item["gt"], _rgb_tensor(data["clean"]))


def test_lmdb_same_keys_without_pairs_txt(tmp_path):
    pairs = []
    for k in range(2):
        pairs.append(
            (
                f"{k:04d}",
                _write(tmp_path / f"rain{k}.png", _image(k)),
                _write(tmp_path / f"clean{k}.png", _image(k + 5)),
            )
        )
    lq, gt = write_paired_lmdb(pairs, tmp_path / "db", progress=False)
    # io_backend lmdb makes the roots LMDBs even without relying on the suffix
    dataset = DerainPairedDataset(
        {"dataroot_lq": lq, "dataroot_gt": gt, "io_backend": {"type": "lmdb"}, "phase": "test"}
    )
    assert len(dataset) == 2
    torch.testing.assert_close(dataset[1]["lq"], _rgb_tensor(_image(1)))
    torch.testing.assert_close(dataset[1]["gt"], _rgb_tensor(_image(6)))


def test_lmdb_different_keys_without_pair_list_raises(many_to_one_lmdb):
    os.remove(Path(many_to_one_lmdb["lq"]).parent / "pairs.txt")
    with pytest.raises(ValueError, match=r"lq\.lmdb and .*gt\.lmdb list different keys"):
        DerainPairedDataset(
            {"dataroot_lq": many_to_one_lmdb["lq"], "dataroot_gt": many_to_one_lmdb["gt"], "phase": "val"}
        )


def test_augmentation_switches(tmp_path):
    image = _image(3, 40, 36)
    _write(tmp_path / "lq" / "x.png", image)
    _write(tmp_path / "gt" / "x.png", image)
    full = _rgb_tensor(image)
    off = DerainPairedDataset(_opt(tmp_path / "lq", tmp_path / "gt", phase="train"))[0]
    torch.testing.assert_close(off["lq"], full)
    # gt_size in val phase: no crop by default
    assert DerainPairedDataset(_opt(tmp_path / "lq", tmp_path / "gt", gt_size=16))[0]["lq"].shape == (3, 40, 36)
    crop_opt = _opt(tmp_path / "lq", tmp_path / "gt", phase="train", gt_size=16, use_hflip=True, use_rot=True)
    crop = DerainPairedDataset(crop_opt)
    seen = set()
    for _ in range(30):
        item = crop[0]
        assert item["lq"].shape == item["gt"].shape == (3, 16, 16)
        torch.testing.assert_close(item["lq"], item["gt"])  # identical images: crops and flips aligned
        seen.add(item["lq"].numpy().tobytes())
    assert len(seen) > 1
    no_crop = DerainPairedDataset({**crop_opt, "use_crop": False, "use_rot": False})[0]
    assert no_crop["lq"].shape == (3, 40, 36)
    assert torch.equal(no_crop["lq"], full) or torch.equal(no_crop["lq"], full.flip(-1))


def test_small_images_pad_and_skip(tmp_path, monkeypatch, caplog):
    small, big = _image(1, 10, 30), _image(2, 32, 32)
    for side in ("lq", "gt"):
        _write(tmp_path / side / "small.png", small)
        _write(tmp_path / side / "big.png", big)
    opt = _opt(tmp_path / "lq", tmp_path / "gt", phase="train", gt_size=16)
    padded = DerainPairedDataset(opt)
    assert len(padded) == 2
    item = padded[padded.pairs.index((str(tmp_path / "lq" / "small.png"), str(tmp_path / "gt" / "small.png")))]
    assert item["lq"].shape == (3, 16, 16)
    torch.testing.assert_close(item["lq"], item["gt"])
    expected = cv2.copyMakeBorder(small, 0, 6, 0, 0, cv2.BORDER_REFLECT_101)
    windows = [_rgb_tensor(expected[:, x : x + 16]) for x in range(15)]
    assert any(torch.equal(item["lq"], window) for window in windows)

    # basicsr's logger does not propagate to the root logger, where caplog listens
    monkeypatch.setattr(get_root_logger(), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="basicsr"):
        skipped = DerainPairedDataset({**opt, "small_images": "skip"})
    assert len(skipped) == 1 and skipped.pairs[0][0].endswith("big.png")
    assert "skipped 1 of 2 pairs" in caplog.text


def test_small_lmdb_skip_uses_meta_info(many_to_one_lmdb):
    opt = {"dataroot_lq": many_to_one_lmdb["lq"], "dataroot_gt": many_to_one_lmdb["gt"], "phase": "train"}
    assert len(DerainPairedDataset({**opt, "gt_size": 20, "small_images": "skip"})) == 3
    with pytest.raises(ValueError, match="every pair is smaller than gt_size 21"):
        DerainPairedDataset({**opt, "gt_size": 21, "small_images": "skip"})


def test_conversions_warn_once_per_dataset(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    deep = rng.integers(0, 65536, (12, 12, 3), dtype=np.uint16)
    rgba = rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)
    for k in range(2):
        _write(tmp_path / "lq" / f"g{k}.png", gray)
        _write(tmp_path / "lq" / f"d{k}.png", deep)
        _write(tmp_path / "lq" / f"r{k}.png", rgba)
        for name in (f"g{k}.png", f"d{k}.png", f"r{k}.png"):
            _write(tmp_path / "gt" / name, _image(k, 12, 12))
    for _ in range(2):  # a second instance warns again
        dataset = DerainPairedDataset(_opt(tmp_path / "lq", tmp_path / "gt"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = {os.path.basename(item["lq_path"]): item["lq"] for item in dataset}
        messages = [str(w.message) for w in caught if issubclass(w.category, ImageConversionWarning)]
        assert len(messages) == 3
        assert sum("grayscale" in m for m in messages) == sum("16-bit" in m for m in messages) == 1
        assert sum("alpha" in m for m in messages) == 1
    torch.testing.assert_close(items["g0.png"], torch.from_numpy(np.repeat(gray[None], 3, 0) / np.float32(255)))
    torch.testing.assert_close(
        items["d1.png"], torch.from_numpy(deep[:, :, ::-1].transpose(2, 0, 1) / np.float32(65535))
    )
    torch.testing.assert_close(items["r0.png"], _rgb_tensor(rgba[:, :, :3]))


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda p: p.write_bytes(cv2.imencode(".png", _image(0))[1].tobytes()[:200]), id="truncated-png"),
        pytest.param(lambda p: p.write_bytes(cv2.imencode(".jpg", _image(0))[1].tobytes()[:300]), id="truncated-jpeg"),
        pytest.param(lambda p: p.write_bytes(b""), id="zero-byte"),
        pytest.param(lambda p: p.write_text("not an image at all\n"), id="text"),
    ],
)
def test_bad_image_file_is_named(tmp_path, make_bad):
    suffix = ".jpg"
    _write(tmp_path / "gt" / f"bad{suffix}", _image(0))
    bad = tmp_path / "lq" / f"bad{suffix}"
    _write(bad, _image(0))
    make_bad(bad)
    dataset = DerainPairedDataset(_opt(tmp_path / "lq", tmp_path / "gt"))
    with pytest.raises(ImageFileError, match=str(bad)):
        dataset[0]


def test_missing_counterpart_is_named(folders):
    lq, gt, _ = folders
    _write(lq / "sub" / "only here.png", _image(0))
    with pytest.raises(FileNotFoundError, match="only here.png"):
        DerainPairedDataset(_opt(lq, gt))
    write_pair_list(lq.parent / "pairs.txt", [("a.png", "missing.png")])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        DerainPairedDataset(_opt(lq, gt, pair_list=str(lq.parent / "pairs.txt")))


def test_size_mismatch_names_both_files(tmp_path):
    lq_file = _write(tmp_path / "lq" / "x.png", _image(0, 20, 24))
    gt_file = _write(tmp_path / "gt" / "x.png", _image(0, 20, 26))
    dataset = DerainPairedDataset(_opt(tmp_path / "lq", tmp_path / "gt"))
    with pytest.raises(ValueError, match="size mismatch") as error:
        dataset[0]
    assert lq_file in str(error.value) and gt_file in str(error.value)


def test_lmdb_key_missing_from_data_is_named(many_to_one_lmdb):
    data = many_to_one_lmdb
    with open(Path(data["lq"]) / "meta_info.txt", "a", encoding="ascii") as meta:
        meta.write("ghost.png (20,24,3) 1\n")
    with open(Path(data["lq"]).parent / "pairs.txt", "a", encoding="utf-8") as pairs:
        pairs.write("ghost\tc0\n")
    dataset = DerainPairedDataset({"dataroot_lq": data["lq"], "dataroot_gt": data["gt"], "phase": "val"})
    assert len(dataset) == 4
    with pytest.raises(ImageFileError, match=r"lq\.lmdb:ghost.*missing from data\.mdb"):
        dataset[3]


def test_malformed_pair_list_line(folders):
    lq, gt, _ = folders
    (lq.parent / "pairs.txt").write_text("a.png a.png\nonly-one-field\n", encoding="utf-8")
    with pytest.raises(PairListError, match=r"pairs\.txt:2"):
        DerainPairedDataset(_opt(lq, gt, pair_list=str(lq.parent / "pairs.txt")))


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("phase", "training", ValueError),
        ("gt_size", 0, ValueError),
        ("use_hflip", "yes", ValueError),
        ("small_images", "crop", ValueError),
        ("io_backend", {"type": "memcached"}, ValueError),
        ("mean", [0.5, 0.5, 0.5], ValueError),
        ("pair_list", "/nonexistent/pairs.txt", FileNotFoundError),
        ("dataroot_gt", "/nonexistent/gt", FileNotFoundError),
    ],
)
def test_invalid_options_name_key_and_value(folders, key, value, error):
    lq, gt, _ = folders
    with pytest.raises(error, match=f"{key}.*{str(value)[:10]}".replace("[", r"\[")):
        DerainPairedDataset({**_opt(lq, gt), key: value})


def test_use_crop_needs_gt_size(folders):
    lq, gt, _ = folders
    with pytest.raises(ValueError, match="'use_crop'.*gt_size"):
        DerainPairedDataset(_opt(lq, gt, use_crop=True))


def test_train_and_val_on_one_lmdb_in_one_process(many_to_one_lmdb):
    opt = {"dataroot_lq": many_to_one_lmdb["lq"], "dataroot_gt": many_to_one_lmdb["gt"]}
    train = DerainPairedDataset({**opt, "phase": "train", "gt_size": 8})
    val = DerainPairedDataset({**opt, "phase": "val"})
    assert train[0]["lq"].shape == (3, 8, 8)
    assert val[0]["lq"].shape == (3, 20, 24)
    assert train[1]["gt"].shape == (3, 8, 8)


def test_build_dataset_and_forked_dataloader_from_lmdb(many_to_one_lmdb):
    opt = {
        "type": "DerainPairedDataset",
        "name": "x",
        "phase": "train",
        "dataroot_lq": many_to_one_lmdb["lq"],
        "dataroot_gt": many_to_one_lmdb["gt"],
        "io_backend": {"type": "lmdb"},
        "gt_size": 8,
        "scale": 1,
        "num_worker_per_gpu": 2,
        "batch_size_per_gpu": 1,
    }
    dataset = build_dataset(opt)
    assert isinstance(dataset, DerainPairedDataset)
    dataset[0]  # the parent opens the environment before the workers fork
    loader = build_dataloader(dataset, opt, num_gpu=0, dist=False, seed=0)
    assert loader.num_workers == 2
    batches = list(loader)
    assert len(batches) == 3
    assert sorted(batch["lq_path"][0] for batch in batches) == ["r0", "r1", "r2"]
    for batch in batches:
        assert batch["lq"].shape == batch["gt"].shape == (1, 3, 8, 8)


def test_lmdb_pair_list_key_not_in_meta_info(many_to_one_lmdb):
    data = many_to_one_lmdb
    pair_list = Path(data["lq"]).parent / "other pairs.txt"
    write_pair_list(pair_list, [("r0", "c0"), ("r1", "nope")])
    opt = {"dataroot_lq": data["lq"], "dataroot_gt": data["gt"], "phase": "val", "pair_list": str(pair_list)}
    with pytest.raises(ValueError, match=r"key 'nope' is not in .*gt\.lmdb/meta_info\.txt"):
        DerainPairedDataset(opt)


def test_hold_out_splits_by_clean_image_the_same_way_everywhere(tmp_path):
    # 40 clean images, 3 rainy versions each (a pair list, as for DDN's 14 per clean image).
    pairs = []
    for i in range(40):
        _write(tmp_path / "clean" / f"c{i}.png", _image(i, 8, 8))
        for k in range(3):
            _write(tmp_path / "rainy" / f"r{i}_{k}.png", _image(100 + 3 * i + k, 8, 8))
            pairs.append((f"r{i}_{k}.png", f"c{i}.png"))
    write_pair_list(tmp_path / "pairs.txt", pairs)
    write_pair_list(tmp_path / "reversed.txt", pairs[::-1])
    base = _opt(tmp_path / "rainy", tmp_path / "clean", pair_list=str(tmp_path / "pairs.txt"))

    def split(keep: str, pair_list: str = "pairs.txt") -> set[tuple[str, str]]:
        dataset = DerainPairedDataset(
            {**base, "pair_list": str(tmp_path / pair_list), "hold_out": {"share": 0.2, "keep": keep}}
        )
        return {(os.path.basename(lq), os.path.basename(gt)) for lq, gt in dataset.pairs}

    held, rest = split("held"), split("rest")
    assert held.isdisjoint(rest) and len(held | rest) == 120
    assert {gt for _, gt in held}.isdisjoint({gt for _, gt in rest})  # no clean image on both sides
    assert 0 < len(held) < 60  # about a fifth
    assert split("held", "reversed.txt") == held  # the order of the pairs does not matter

    for bad in ({"share": 0}, {"share": 1.5, "keep": "held"}, {"share": 0.1, "keep": "test"}, "10%"):
        with pytest.raises(
            ValueError, match="'hold_out'.*expected {share: a number in \\(0, 1\\), keep: rest or held}"
        ):
            DerainPairedDataset({**base, "hold_out": bad})
    with pytest.raises(ValueError, match="no pair of 120 is held out; choose another share"):
        DerainPairedDataset({**base, "hold_out": {"share": 1e-9, "keep": "held"}})
