"""Bad files in every layout: conversion stops naming the file (or skips it and reports it with
``skip_bad``), and reading the original folder raises naming the file: never a silently wrong pair."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_create_lmdb import BUILDERS, _build, _corrupt

from erl_plugin.data import DerainPairedDataset
from erl_plugin.data.convert import ConversionError, convert_dataset
from erl_plugin.data.layouts import find_pairs, source_root

REPO = Path(__file__).resolve().parents[2]
KINDS = ["truncated", "zero-byte", "text"]


def _last_rainy(layout: str, src: Path) -> Path:
    lq, _ = find_pairs(layout, src)[-1]
    return source_root(layout, src) / lq


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_a_bad_image_is_named_or_skipped_in_every_layout(tmp_path: Path, case: str, kind: str) -> None:
    layout, src, _ = _build(case, tmp_path)
    bad = _last_rainy(layout, src)
    _corrupt(kind, bad)
    with pytest.raises(ConversionError) as error:
        convert_dataset(layout, src, tmp_path / "dst", progress=False)
    assert bad.name in str(error.value)
    assert not (tmp_path / "dst").exists()
    summary = convert_dataset(layout, src, tmp_path / "dst", skip_bad=True, progress=False)
    assert len(summary.skipped) == 1 and bad.name in (tmp_path / "dst/skipped.txt").read_text(encoding="utf-8")
    folder = DerainPairedDataset({"layout": layout, "dataroot": str(src), "phase": "val"})
    with pytest.raises(ValueError, match=bad.name):
        folder[len(folder) - 1]


@pytest.mark.parametrize("case", sorted(set(BUILDERS) - {"did"}))  # a DID file holds both halves
def test_a_missing_counterpart_is_named_in_every_layout(tmp_path: Path, case: str) -> None:
    layout, src, _ = _build(case, tmp_path)
    lq, gt = find_pairs(layout, src)[0]
    os.remove(source_root(layout, src) / gt)
    with pytest.raises(ValueError) as error:
        convert_dataset(layout, src, tmp_path / "dst", progress=False)
    assert Path(gt).name in str(error.value) or Path(lq).name in str(error.value)
    assert not (tmp_path / "dst").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_conversion_killed_midway_leaves_nothing_under_the_target(tmp_path: Path, sig: signal.Signals) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for kind in ("input", "target"):
        (src / kind).mkdir(parents=True)
        for index in range(400):
            cv2.imwrite(str(src / kind / f"{index:04d}.png"), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    dst = tmp_path / "dst"
    command = [
        sys.executable,
        str(REPO / "tools/create_lmdb.py"),
        "--layout",
        "pairs",
        str(src),
        str(dst),
        "--no-progress",
    ]
    # Ctrl-C as at a terminal: a shell without job control starts background jobs with SIGINT
    # ignored, and the child would inherit that.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("dst.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob("dst.tmp-*")), "the conversion never started writing"
    assert process.poll() is None, "the conversion ended before it could be interrupted"
    process.send_signal(sig)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert not dst.exists()
    if sig == signal.SIGINT:  # a clean stop also removes its temporary folder
        assert not list(tmp_path.glob("dst.tmp-*"))
