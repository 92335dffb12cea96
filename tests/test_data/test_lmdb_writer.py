"""Tests for erl_plugin.data.lmdb_writer: BasicSR-compatible LMDBs that never half-fail."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from basicsr.data.data_util import paired_paths_from_lmdb
from conftest import read_lmdb_images

from erl_plugin.data import lmdb_writer
from erl_plugin.data.images import ImageFileError
from erl_plugin.data.lmdb_writer import write_image_lmdb, write_paired_lmdb
from erl_plugin.utils.outputs import OutputError


def _write(path: Path, image: np.ndarray) -> str:
    assert cv2.imwrite(str(path), image)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> list[tuple[str, str]]:
    """Keyed 40x48 images: colour, grey (2-D), 16-bit colour and BGRA."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    arrays = {
        "0001": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
        "0002": rng.integers(0, 256, (40, 48), dtype=np.uint8),
        "0003": rng.integers(0, 65536, (40, 48, 3), dtype=np.uint16),
        "0004": rng.integers(0, 256, (40, 48, 4), dtype=np.uint8),
    }
    return [(key, _write(folder / f"img_{key}.png", array)) for key, array in arrays.items()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_roundtrip_pixels_and_meta_info(tmp_path, images):
    lmdb_path = str(tmp_path / "out.lmdb")
    assert write_image_lmdb(images, lmdb_path, progress=False) == 4
    meta = (tmp_path / "out.lmdb" / "meta_info.txt").read_text()
    assert meta == "0001.png (40,48,3) 1\n0002.png (40,48,1) 1\n0003.png (40,48,3) 1\n0004.png (40,48,4) 1\n"
    stored = read_lmdb_images(lmdb_path)
    assert sorted(stored) == ["0001", "0002", "0003", "0004"]
    for key, path in images:
        original = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert stored[key].dtype == original.dtype
        np.testing.assert_array_equal(stored[key], original)
    assert _leftovers(tmp_path) == []


def test_streams_a_generator_and_grows_the_map(tmp_path, images, monkeypatch):
    monkeypatch.setattr(lmdb_writer, "_INITIAL_MAP_SIZE", 64 * 1024)
    monkeypatch.setattr(lmdb_writer, "_COMMIT_EVERY_ITEMS", 3)
    many = ((f"k{i:03d}", images[2][1]) for i in range(20))  # 20 x ~11 KiB of 16-bit noise > 64 KiB
    lmdb_path = str(tmp_path / "grown.lmdb")
    assert write_image_lmdb(many, lmdb_path, progress=False) == 20
    assert (tmp_path / "grown.lmdb" / "data.mdb").stat().st_size > 64 * 1024
    stored = read_lmdb_images(lmdb_path)
    assert len(stored) == 20
    np.testing.assert_array_equal(stored["k019"], cv2.imread(images[2][1], cv2.IMREAD_UNCHANGED))


def test_paired_lmdb_is_read_by_basicsr(tmp_path, images):
    pairs = [(key, path, path) for key, path in images]
    lq, gt = write_paired_lmdb(pairs, str(tmp_path / "paired"), progress=False)
    assert (lq, gt) == (str(tmp_path / "paired" / "lq.lmdb"), str(tmp_path / "paired" / "gt.lmdb"))
    paths = paired_paths_from_lmdb([lq, gt], ["lq", "gt"])
    assert sorted(p["lq_path"] for p in paths) == ["0001", "0002", "0003", "0004"]
    assert all(p["lq_path"] == p["gt_path"] for p in paths)


@pytest.mark.parametrize("bad_key", ["a.b", "", "a b", "tab\tkey", "clé", "0001"])
def test_bad_or_duplicate_key_rejected(tmp_path, images, bad_key):
    items = [*images, (bad_key, images[0][1])]  # "0001" duplicates the first key
    with pytest.raises(ValueError, match="LMDB key") as info:
        write_image_lmdb(items, str(tmp_path / "out.lmdb"), progress=False)
    assert repr(bad_key) in str(info.value)
    assert not (tmp_path / "out.lmdb").exists()
    assert _leftovers(tmp_path) == []


def test_unreadable_last_image_leaves_nothing(tmp_path, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ImageFileError, match=str(broken)):
        write_image_lmdb([*images, ("0005", str(broken))], str(tmp_path / "out.lmdb"), progress=False)
    assert not (tmp_path / "out.lmdb").exists()
    assert _leftovers(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path, images):
    def interrupted():
        yield images[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_image_lmdb(interrupted(), str(tmp_path / "out.lmdb"), progress=False)
    assert not (tmp_path / "out.lmdb").exists()
    assert _leftovers(tmp_path) == []


def test_existing_target_refused_then_replaced_with_overwrite(tmp_path, images):
    target = tmp_path / "out.lmdb"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=str(target)):
        write_image_lmdb(images, str(target), progress=False)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "precious"

    # --overwrite replaces only what the tools wrote: a folder of the user's is never deleted.
    with pytest.raises(OutputError, match="was not written by this project"):
        write_image_lmdb(images[:2], str(target), overwrite=True, progress=False)
    assert (target / "keep.txt").read_text() == "precious"
    written = tmp_path / "written.lmdb"
    write_image_lmdb(images, str(written), progress=False)
    assert write_image_lmdb(images[:2], str(written), overwrite=True, progress=False) == 2
    assert sorted(read_lmdb_images(str(written))) == ["0001", "0002"]
    assert _leftovers(tmp_path) == [] and not list(tmp_path.glob("*.lock"))


def test_failed_overwrite_keeps_the_old_lmdb(tmp_path, images):
    target = str(tmp_path / "out.lmdb")
    write_image_lmdb(images[:1], target, progress=False)
    with pytest.raises(ImageFileError):
        write_image_lmdb([("0009", str(tmp_path / "missing.png"))], target, overwrite=True, progress=False)
    assert sorted(read_lmdb_images(target)) == ["0001"]
    assert _leftovers(tmp_path) == []


def test_paired_size_mismatch_names_both_files(tmp_path, images):
    small = _write(tmp_path / "small.png", np.zeros((40, 40, 3), np.uint8))
    pairs = [("0001", images[0][1], images[0][1]), ("0002", images[1][1], small)]
    with pytest.raises(ValueError, match="height x width") as info:
        write_paired_lmdb(pairs, str(tmp_path / "paired"), progress=False)
    assert images[1][1] in str(info.value) and small in str(info.value)
    assert list((tmp_path / "paired").iterdir()) == []


def test_path_must_end_with_lmdb(tmp_path, images):
    with pytest.raises(ValueError, match="must end with '.lmdb'"):
        write_image_lmdb(images, str(tmp_path / "out"), progress=False)
