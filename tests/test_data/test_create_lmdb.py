"""Converting each data set layout into LMDBs (erl_plugin.data.convert, tools/create_lmdb.py)."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import read_lmdb_images

from erl_plugin.data import convert
from erl_plugin.data.convert import ConversionError, convert_dataset, make_keys, verify_dataset
from erl_plugin.data.layouts import LayoutError
from erl_plugin.data.pair_list import read_pair_list, write_pair_list

REPO = Path(__file__).resolve().parents[2]
H, W = 12, 16
Expected = list[tuple[np.ndarray, np.ndarray]]


def _save(path: Path, seed: int, width: int = W) -> np.ndarray:
    """Write a random image and return its pixels as decoded from the file (JPEG is lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (H, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _rain100_test(src: Path) -> Expected:
    return [(_save(src / f"rainy/rain-00{i}.png", i), _save(src / f"norain-00{i}.png", 10 + i)) for i in (1, 2)]


def _rain100_train(src: Path) -> Expected:
    # natural order: rain-2 before rain-10
    return [(_save(src / f"rain-{i}.png", i), _save(src / f"norain-{i}.png", 10 + i)) for i in (2, 10)]


def _rain200(src: Path) -> Expected:
    return [
        (_save(src / f"rain/X2/norain-{i}x2.png", i), _save(src / f"norain/norain-{i}.png", 10 + i)) for i in (1, 2)
    ]


def _rain13k(src: Path) -> Expected:
    return [(_save(src / f"input/{i}.jpg", i), _save(src / f"target/{i}.jpg", 10 + i)) for i in (1, 2)]


def _rain13k_source_target(src: Path) -> Expected:
    return [(_save(src / f"Source/{i}.png", i), _save(src / f"Target/{i}.png", 10 + i)) for i in (1, 2)]


def _ddn(src: Path) -> Expected:
    expected = []
    for i in (1, 2):
        clean = _save(src / f"ground_truth/{i}.jpg", 100 + i)
        expected += [(_save(src / f"rainy_image/{i}_{k}.jpg", 10 * i + k), clean) for k in (1, 2, 3)]
    return expected


def _did(src: Path) -> Expected:
    expected = []
    for i in (1, 2):
        both = _save(src / f"Rain_Heavy/train2018new/{i}.jpg", i, width=2 * W)
        expected.append((both[:, :W], both[:, W:]))
    return expected


def _raindrop(src: Path) -> Expected:
    return [(_save(src / f"data/{i}_rain.png", i), _save(src / f"gt/{i}_clean.png", 10 + i)) for i in (0, 1)]


def _pairs(src: Path) -> Expected:
    names = ["a.png", "city/street/b.png", "ré gen 1.png"]  # nested, unicode, space
    return [(_save(src / "input" / name, i), _save(src / "target" / name, 10 + i)) for i, name in enumerate(names)]


def _list(src: Path) -> Expected:
    expected = [(_save(src / f"rainy/{i}.png", i), _save(src / f"clean/{i}.png", 10 + i)) for i in (1, 2)]
    write_pair_list(src / "list.txt", [(f"rainy/{i}.png", f"./clean/{i}.png") for i in (1, 2)])
    return expected


BUILDERS: dict[str, tuple[str, Callable[[Path], Expected]]] = {
    "rain100h-test": ("rain100h", _rain100_test),
    "rain100l-train": ("rain100l", _rain100_train),
    "rain200h": ("rain200h", _rain200),
    "rain13k": ("rain13k", _rain13k),
    "rain13k-source-target": ("rain13k", _rain13k_source_target),
    "ddn": ("ddn", _ddn),
    "did": ("did", _did),
    "raindrop": ("raindrop", _raindrop),
    "pairs": ("pairs", _pairs),
    "list": ("list", _list),
}


def _build(case: str, tmp_path: Path) -> tuple[str, Path, Expected]:
    layout, builder = BUILDERS[case]
    src = tmp_path / "src"
    expected = builder(src)
    return layout, src / "list.txt" if layout == "list" else src, expected


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("dst"))


@pytest.mark.parametrize("case", list(BUILDERS))
def test_each_layout_converts_to_the_source_pixels(tmp_path: Path, case: str) -> None:
    layout, src, expected = _build(case, tmp_path)
    summary = convert_dataset(layout, src, tmp_path / "dst", progress=False)
    pairs = read_pair_list(tmp_path / "dst" / "pairs.txt")
    assert summary.pairs == len(pairs) == len(expected)
    lq_images, gt_images = read_lmdb_images(tmp_path / "dst/lq.lmdb"), read_lmdb_images(tmp_path / "dst/gt.lmdb")
    for (lq_key, gt_key), (lq, gt) in zip(pairs, expected, strict=True):
        np.testing.assert_array_equal(lq_images[lq_key], lq)
        np.testing.assert_array_equal(gt_images[gt_key], gt)
    assert verify_dataset(tmp_path / "dst").problems == []


def test_ddn_stores_each_clean_image_once(tmp_path: Path) -> None:
    _, src, _ = _build("ddn", tmp_path)
    summary = convert_dataset("ddn", src, tmp_path / "dst", progress=False)
    assert (summary.pairs, summary.lq_images, summary.gt_images) == (6, 6, 2)
    assert sorted(read_lmdb_images(tmp_path / "dst/gt.lmdb")) == ["ground_truth__1", "ground_truth__2"]
    pairs = read_pair_list(tmp_path / "dst/pairs.txt")
    assert pairs[:3] == [(f"rainy_image__1_{k}", "ground_truth__1") for k in (1, 2, 3)]
    sources = (tmp_path / "dst/sources.txt").read_text(encoding="utf-8").splitlines()
    assert sources[:2] == ["gt\tground_truth__1\tground_truth/1.jpg", "lq\trainy_image__1_1\trainy_image/1_1.jpg"]


def test_did_sources_name_the_half(tmp_path: Path) -> None:
    _, src, _ = _build("did", tmp_path)
    convert_dataset("did", src, tmp_path / "dst", progress=False)
    lines = (tmp_path / "dst/sources.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:2] == [
        "gt\tRain_Heavy__train2018new__1\tRain_Heavy/train2018new/1.jpg#right",
        "lq\tRain_Heavy__train2018new__1\tRain_Heavy/train2018new/1.jpg#left",
    ]


def test_conversion_is_byte_identical_across_runs_and_workers(tmp_path: Path) -> None:
    _, src, _ = _build("pairs", tmp_path)
    convert_dataset("pairs", src, tmp_path / "dst1", progress=False)
    convert_dataset("pairs", src, tmp_path / "dst2", progress=False, workers=2)
    for name in ("pairs.txt", "sources.txt", "lq.lmdb/meta_info.txt", "gt.lmdb/meta_info.txt"):
        assert (tmp_path / "dst1" / name).read_bytes() == (tmp_path / "dst2" / name).read_bytes()
    assert read_lmdb_images(tmp_path / "dst1/lq.lmdb").keys() == read_lmdb_images(tmp_path / "dst2/lq.lmdb").keys()
    assert read_pair_list(tmp_path / "dst1/pairs.txt") == [
        ("input__a", "target__a"),
        ("input__city__street__b", "target__city__street__b"),
        ("input__r__gen_1", "target__r__gen_1"),
    ]


def test_keys_are_safe_unique_and_stable() -> None:
    keys = make_keys(["a b.png", "a_b.png", "x/y.z.png", "a b.png"])
    assert list(keys.values()) == ["a_b", "a_b-" + keys["a_b.png"].split("-")[1], "x__y_z"]
    assert keys == make_keys(["a b.png", "a_b.png", "x/y.z.png"])
    assert all(key.isascii() and "." not in key and " " not in key for key in keys.values())


def test_existing_dst_needs_overwrite(tmp_path: Path) -> None:
    layout, src, _ = _build("raindrop", tmp_path)
    convert_dataset(layout, src, tmp_path / "dst", progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_dataset(layout, src, tmp_path / "dst", progress=False)
    summary = convert_dataset(layout, src, tmp_path / "dst", progress=False, overwrite=True)
    assert summary.pairs == 2 and _leftovers(tmp_path) == ["dst"]


def _corrupt(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    else:
        path.write_text("not an image\n")


@pytest.mark.parametrize(
    ("case", "relative", "kind"),
    [
        ("raindrop", "gt/1_clean.png", "truncated"),
        ("rain13k", "input/2.jpg", "truncated"),
        ("raindrop", "data/1_rain.png", "zero-byte"),
        ("raindrop", "data/1_rain.png", "text"),
    ],
)
def test_a_bad_later_image_stops_and_leaves_nothing(tmp_path: Path, case: str, relative: str, kind: str) -> None:
    layout, src, _ = _build(case, tmp_path)
    _corrupt(kind, src / relative)
    with pytest.raises(ConversionError, match=relative):
        convert_dataset(layout, src, tmp_path / "dst", progress=False)
    assert _leftovers(tmp_path) == []
    convert_dataset(layout, src, tmp_path / "dst", progress=False, skip_bad=True)
    skipped = (tmp_path / "dst/skipped.txt").read_text(encoding="utf-8").splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(f"{_lq_of(relative)}\t") and relative in skipped[0]
    assert len(read_pair_list(tmp_path / "dst/pairs.txt")) == 1


def _lq_of(relative: str) -> str:
    return {"gt/1_clean.png": "data/1_rain.png"}.get(relative, relative)


def test_size_mismatch_is_named_or_skipped(tmp_path: Path) -> None:
    _, src, _ = _build("ddn", tmp_path)
    _save(src / "rainy_image/2_3.jpg", 0, width=W + 2)
    with pytest.raises(ConversionError, match="2_3.jpg.*height x width"):
        convert_dataset("ddn", src, tmp_path / "dst", progress=False)
    summary = convert_dataset("ddn", src, tmp_path / "dst", progress=False, skip_bad=True)
    assert [lq for lq, _, _ in summary.skipped] == ["rainy_image/2_3.jpg"]
    assert (summary.pairs, summary.gt_images) == (5, 2)


def test_clean_image_is_kept_when_its_first_pair_is_skipped(tmp_path: Path) -> None:
    _, src, expected = _build("ddn", tmp_path)
    _corrupt("zero-byte", src / "rainy_image/1_1.jpg")
    convert_dataset("ddn", src, tmp_path / "dst", progress=False, skip_bad=True)
    gt_images = read_lmdb_images(tmp_path / "dst/gt.lmdb")
    np.testing.assert_array_equal(gt_images["ground_truth__1"], expected[0][1])
    assert verify_dataset(tmp_path / "dst").problems == []


def test_did_odd_width_is_named_or_skipped(tmp_path: Path) -> None:
    _, src, _ = _build("did", tmp_path)
    _save(src / "Rain_Light/train2018new/3.jpg", 3, width=2 * W + 1)
    with pytest.raises(ConversionError, match="3.jpg is 33 pixels wide"):
        convert_dataset("did", src, tmp_path / "dst", progress=False)
    summary = convert_dataset("did", src, tmp_path / "dst", progress=False, skip_bad=True)
    assert summary.pairs == 2 and summary.skipped[0][0] == "Rain_Light/train2018new/3.jpg"


def test_everything_skipped_is_an_error(tmp_path: Path) -> None:
    _, src, _ = _build("raindrop", tmp_path)
    for name in ("data/0_rain.png", "data/1_rain.png"):
        _corrupt("zero-byte", src / name)
    with pytest.raises(ConversionError, match="every pair was skipped"):
        convert_dataset("raindrop", src, tmp_path / "dst", progress=False, skip_bad=True)
    assert _leftovers(tmp_path) == []


def test_interrupt_leaves_no_dst_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, src, _ = _build("pairs", tmp_path)
    calls = []

    def interrupted_read(path: str) -> np.ndarray:
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return cv2.imread(path, cv2.IMREAD_UNCHANGED)

    monkeypatch.setattr(convert, "read_image", interrupted_read)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset("pairs", src, tmp_path / "dst", progress=False)
    assert len(calls) == 4 and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("setup", "layout", "message"),
    [
        (lambda src: (src / "target/2.jpg").unlink(), "rain13k", "input/2.jpg has no clean counterpart"),
        (lambda src: (src / "input/2.jpg").unlink(), "rain13k", "target/2.jpg has no rainy counterpart"),
        (lambda src: _save(src / "input/1.png", 5), "rain13k", "1.jpg and 1.png have the same name"),
        (lambda src: None, "rain100h", "use --layout rain13k"),
        (lambda src: None, "ddn", "ddn expects rainy_image"),
    ],
)
def test_layout_mismatches_are_named(tmp_path: Path, setup: Callable[[Path], object], layout: str, message: str):
    _, src, _ = _build("rain13k", tmp_path)
    setup(src)
    with pytest.raises(LayoutError, match=message):
        convert_dataset(layout, src, tmp_path / "dst", progress=False)
    assert _leftovers(tmp_path) == []


def test_list_with_an_lq_twice_is_an_error(tmp_path: Path) -> None:
    _, list_file, _ = _build("list", tmp_path)
    write_pair_list(list_file, [("rainy/1.png", "clean/1.png"), ("./rainy/1.png", "clean/2.png")])
    with pytest.raises(LayoutError, match="rainy/1.png is listed twice"):
        convert_dataset("list", list_file, tmp_path / "dst", progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / "tools/create_lmdb.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def _tool_main() -> Callable[[list[str]], int]:
    """``tools/create_lmdb.py``'s ``main``, for in-process CLI checks (a subprocess costs seconds)."""
    spec = importlib.util.spec_from_file_location("create_lmdb_tool", REPO / "tools/create_lmdb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_converts_verifies_and_reports_tampering(tmp_path: Path) -> None:
    _, src, _ = _build("raindrop", tmp_path)
    dst = tmp_path / "dst"
    done = _cli("--layout", "raindrop", str(src), str(dst), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "wrote 2 pairs" in done.stdout
    meta = dst / "gt.lmdb/meta_info.txt"
    meta.write_text(meta.read_text() + "gt__ghost.png (12,16,3) 1\n")
    bad = _cli("--verify", str(dst))
    assert bad.returncode == 1 and "'gt__ghost' is listed in meta_info.txt but missing from data.mdb" in bad.stderr


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    _, src, _ = _build("rain13k", tmp_path)
    wrong = _cli("--layout", "rain100h", str(src), str(tmp_path / "dst"), "--no-progress")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error:") and "rain13k" in wrong.stderr
    assert "Traceback" not in wrong.stderr and _leftovers(tmp_path) == []


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _tool_main()
    _, src, _ = _build("raindrop", tmp_path)
    dst = str(tmp_path / "dst")
    assert main(["--layout", "raindrop", str(src), dst, "--no-progress", "--skip-bad"]) == 0
    assert "skipped 0 bad pair(s)" in capsys.readouterr().out
    assert main(["--layout", "raindrop", str(src), dst, "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--verify", dst]) == 0
    assert capsys.readouterr().out.startswith(f"OK {dst}: 2 pairs, 2 lq and 2 gt images")
    with pytest.raises(SystemExit) as usage:
        main(["--layout", "ddn", str(src)])
    assert usage.value.code == 2 and "error: give --layout LAYOUT SRC DST" in capsys.readouterr().err


def test_verify_names_a_pair_key_missing_from_an_lmdb(tmp_path: Path) -> None:
    layout, src, _ = _build("raindrop", tmp_path)
    convert_dataset(layout, src, tmp_path / "dst", progress=False)
    write_pair_list(tmp_path / "dst/pairs.txt", [("data__0_rain", "gt__9_clean")])
    assert verify_dataset(tmp_path / "dst").problems == [
        f"{tmp_path / 'dst/pairs.txt'}: gt key 'gt__9_clean' is not in gt.lmdb"
    ]


def _checksums(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dst", ["src", ".", "src/lmdb"])
def test_overwrite_onto_the_source_or_around_it_is_refused_and_loses_nothing(
    tmp_path: Path, dst: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal without --overwrite used to lead straight to deleting the source with it."""
    main = _tool_main()
    layout, src, _ = _build("raindrop", tmp_path)
    before = _checksums(tmp_path)
    for flags in ([], ["--overwrite"]):
        assert main(["--layout", layout, str(src), str(tmp_path / dst), "--no-progress", *flags]) == 2
        error = capsys.readouterr().err
        assert "the input" in error and str(src) in error
    assert _checksums(tmp_path) == before


def _lock(pid: int, *creates: str) -> str:
    """What a run of this project writes into ``<out>.lock``."""
    return json.dumps({"owner": "erl_plugin", "pid": pid, "host": socket.gethostname(), "creates": list(creates)})


def test_a_concurrent_run_is_refused_and_an_interrupted_runs_leftovers_are_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the names the dead run recorded in its lock are removed; look-alike folders of the user's stay."""
    main = _tool_main()
    layout, src, _ = _build("raindrop", tmp_path)
    dst = tmp_path / "dst"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "dst.lock").write_text(_lock(sleeper.pid))  # a live run holds the output
        assert main(["--layout", layout, str(src), str(dst), "--no-progress"]) == 2
        assert f"another run (pid {sleeper.pid} on {socket.gethostname()}) is writing {dst}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / "dst.lock").write_text(_lock(sleeper.pid, f"dst.tmp-{sleeper.pid}", f"dst.old-{sleeper.pid}"))
    (tmp_path / f"dst.tmp-{sleeper.pid}").mkdir()  # what the killed run left
    for users in ("dst.old-2024", "dst.tmp-31337"):  # the user's, named like leftovers
        (tmp_path / users).mkdir()
        (tmp_path / users / "notes.txt").write_text("mine")
    assert main(["--layout", layout, str(src), str(dst), "--no-progress"]) == 0
    notes = capsys.readouterr().err
    assert f"removed {tmp_path / f'dst.tmp-{sleeper.pid}'}, left by an interrupted run" in notes
    assert "taking it over" in notes
    assert _leftovers(tmp_path) == ["dst", "dst.old-2024", "dst.tmp-31337"] and not (tmp_path / "dst.lock").exists()


def test_a_lock_file_that_is_not_the_projects_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _tool_main()
    layout, src, _ = _build("raindrop", tmp_path)
    (tmp_path / "dst.lock").write_text("12345\n")
    assert main(["--layout", layout, str(src), str(tmp_path / "dst"), "--no-progress"]) == 2
    assert "dst.lock exists and is not a lock of this project; it is left alone" in capsys.readouterr().err
    assert (tmp_path / "dst.lock").read_text() == "12345\n" and not (tmp_path / "dst").exists()
