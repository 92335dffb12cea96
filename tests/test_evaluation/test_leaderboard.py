"""Leaderboard: measured rows equal an independent computation, matrix, reported rows, errors, CLI."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_python

from erl_plugin.archs import MEMD
from erl_plugin.data.convert import convert_dataset
from erl_plugin.data.images import read_image
from erl_plugin.evaluation.evaluate import derain, load_network
from erl_plugin.evaluation.leaderboard import (
    ModelSpec,
    read_models,
    read_reported,
    read_test_sets,
    run_leaderboard,
    write_leaderboard,
)
from erl_plugin.evaluation.leaderboard import TestSetSpec as SetSpec
from erl_plugin.metrics.protocols import psnr, ssim
from erl_plugin.utils.outputs import OutputFolder

TINY = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}
PROTOCOLS = ("basicsr", "paper")


def _image(rng: np.random.Generator, height: int = 30, width: int = 36) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny MEMD checkpoints, their options, and two test sets (pairs and rain100h layouts)."""
    root = tmp_path_factory.mktemp("leaderboard")
    rng = np.random.default_rng(0)
    (root / "opt.yml").write_text(yaml.safe_dump({"network_g": TINY}))
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = MEMD(**{key: value for key, value in TINY.items() if key != "type"})
        torch.save({"params": net.state_dict()}, root / f"memd{seed}.pth")
    for kind in ("input", "target"):
        (root / "pairs" / kind).mkdir(parents=True)
    for name in ("a", "b"):
        for kind in ("input", "target"):
            cv2.imwrite(str(root / "pairs" / kind / f"{name}.png"), _image(rng))
    (root / "rain100h" / "rainy").mkdir(parents=True)
    for index in (1, 2, 3):
        cv2.imwrite(str(root / "rain100h" / f"norain-{index:03d}.png"), _image(rng, 28, 40))
        cv2.imwrite(str(root / "rain100h" / "rainy" / f"rain-{index:03d}.png"), _image(rng, 28, 40))
    models = [
        {"name": "A", "options": str(root / "opt.yml"), "checkpoint": str(root / "memd0.pth"), "trained_on": "SetA"},
        {"name": "B", "options": str(root / "opt.yml"), "checkpoint": str(root / "memd1.pth"), "trained_on": "SetB"},
    ]
    test_sets = [
        {"name": "Pairs", "layout": "pairs", "dataroot": str(root / "pairs")},
        {"name": "Rain100H", "layout": "rain100h", "dataroot": str(root / "rain100h")},
    ]
    (root / "models.yml").write_text(yaml.safe_dump(models))
    (root / "testsets.yml").write_text(yaml.safe_dump(test_sets))
    return {"root": root, "models": root / "models.yml", "testsets": root / "testsets.yml"}


def _expected(root: Path, checkpoint: str, pairs: list[tuple[str, str]], protocol: str) -> tuple[float, float]:
    net = load_network(str(root / "opt.yml"), str(root / checkpoint)).net
    psnrs, ssims = [], []
    for rainy, clean in pairs:
        output = derain(net, read_image(root / rainy, cv2.IMREAD_COLOR))
        reference = read_image(root / clean, cv2.IMREAD_COLOR)
        psnrs.append(psnr(output, reference, protocol))
        ssims.append(ssim(output, reference, protocol))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_rows_equal_an_independent_computation(setup: dict[str, Path], tmp_path: Path) -> None:
    root = setup["root"]
    rows = run_leaderboard(read_models(str(setup["models"])), read_test_sets(str(setup["testsets"])), PROTOCOLS)
    assert [(row.model, row.test_set) for row in rows] == [
        ("A", "Pairs"),
        ("B", "Pairs"),
        ("A", "Rain100H"),
        ("B", "Rain100H"),
    ]
    sets = {
        "Pairs": [("pairs/input/a.png", "pairs/target/a.png"), ("pairs/input/b.png", "pairs/target/b.png")],
        "Rain100H": [(f"rain100h/rainy/rain-{i:03d}.png", f"rain100h/norain-{i:03d}.png") for i in (1, 2, 3)],
    }
    checkpoints = {"A": "memd0.pth", "B": "memd1.pth"}
    for row in rows:
        assert row.source == "measured" and row.images == len(sets[row.test_set])
        for protocol in PROTOCOLS:
            expected = _expected(root, checkpoints[row.model], sets[row.test_set], protocol)
            assert (row.psnr[protocol], row.ssim[protocol]) == pytest.approx(expected, abs=1e-9)
        assert row.params == sum(
            p.numel() for p in load_network(str(root / "opt.yml"), str(root / "memd0.pth")).net.parameters()
        )
        assert row.flops > 0 and row.ms_per_image > 0 and row.device.startswith("CPU")
    assert rows[0].psnr["basicsr"] != rows[0].psnr["paper"]

    with OutputFolder(tmp_path, tool="leaderboard") as out:
        paths = write_leaderboard(out, rows, PROTOCOLS, matrix=True)
    assert [Path(p).name for p in paths] == ["leaderboard.md", "leaderboard.csv", "matrix.md", "matrix.csv"]
    table = _read_csv(tmp_path / "leaderboard.csv")
    assert len(table) == 4
    for line, row in zip(table, rows, strict=True):
        assert (line["model"], line["test set"], line["source"]) == (row.model, row.test_set, "measured")
        assert float(line["PSNR (paper)"]) == pytest.approx(row.psnr["paper"], abs=5e-5)
        assert float(line["SSIM (basicsr)"]) == pytest.approx(row.ssim["basicsr"], abs=5e-5)
        assert int(line["params"]) == row.params and line["device"] == row.device
        assert float(line["GFLOPs (MACs) at 320x320"]) == pytest.approx(row.flops / 1e9, abs=5e-5)
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "PSNR (basicsr)" in markdown and "SSIM (paper)" in markdown and rows[0].device in markdown

    grid = _read_csv(tmp_path / "matrix.csv")
    assert [(line["trained on"], line["model"]) for line in grid] == [("SetA", "A"), ("SetB", "B")]
    assert list(grid[0])[2:] == [f"{s} {m} (basicsr)" for s in ("Pairs", "Rain100H") for m in ("PSNR", "SSIM")]
    cell = next(row for row in rows if (row.model, row.test_set) == ("B", "Rain100H"))
    assert float(grid[1]["Rain100H PSNR (basicsr)"]) == pytest.approx(cell.psnr["basicsr"], abs=5e-5)
    assert f"{cell.psnr['basicsr']:.2f}/{cell.ssim['basicsr']:.4f}" in (tmp_path / "matrix.md").read_text()


def test_reported_rows_are_marked_and_match_the_yaml(tmp_path: Path) -> None:
    document = yaml.safe_load((REPO / "docs" / "reported.yml").read_text())
    rows = read_reported(str(REPO / "docs" / "reported.yml"))
    expected = {
        (method["method"], test_set): (numbers["psnr"], numbers["ssim"])
        for method in document["methods"]
        for test_set, numbers in method["results"].items()
        if numbers is not None
    }
    assert {(row.model, row.test_set): (row.psnr["reported"], row.ssim["reported"]) for row in rows} == expected
    assert ("Restormer", "Rain100H") in expected and expected[("Restormer", "Rain100H")] == (31.46, 0.904)
    assert all(row.source.startswith("reported (") and set(row.psnr) == {"reported"} for row in rows)

    with OutputFolder(tmp_path, tool="leaderboard") as out:
        write_leaderboard(out, rows, PROTOCOLS)
    table = _read_csv(tmp_path / "leaderboard.csv")
    assert len(table) == len(expected)
    for line in table:
        assert line["source"].startswith("reported (")
        assert (float(line["PSNR (reported)"]), float(line["SSIM (reported)"])) == expected[
            (line["model"], line["test set"])
        ]
        assert line["PSNR (basicsr)"] == line["params"] == line["ms/image"] == ""


def _spec_error(setup: dict[str, Path], match: str, **changes: object) -> None:
    root = setup["root"]
    model = ModelSpec("A", str(root / "opt.yml"), str(root / "memd0.pth"))
    test_set = SetSpec("Pairs", str(root / "pairs"), layout="pairs")
    protocols = changes.pop("protocols", PROTOCOLS)
    model = changes.pop("model", model)
    test_set = changes.pop("test_set", test_set)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run_leaderboard([model], [test_set], protocols, progress=False)


def test_bad_input(setup: dict[str, Path], tmp_path: Path) -> None:
    root = setup["root"]
    _spec_error(setup, "'psnr'.*allowed: basicsr, paper, matlab", protocols=("basicsr", "psnr"))
    wide = {**TINY, "num_feat": 8}
    torch.save({"params": MEMD(**{k: v for k, v in wide.items() if k != "type"}).state_dict()}, tmp_path / "wide.pth")
    _spec_error(setup, "wide.pth does not fit", model=ModelSpec("W", str(root / "opt.yml"), str(tmp_path / "wide.pth")))
    (tmp_path / "empty" / "input").mkdir(parents=True)
    (tmp_path / "empty" / "target").mkdir()
    _spec_error(setup, "no image files", test_set=SetSpec("E", str(tmp_path / "empty"), layout="pairs"))
    (tmp_path / "bad.yml").write_text(yaml.safe_dump([{"name": "A", "options": "o.yml"}]))
    with pytest.raises(ValueError, match="'checkpoint' = None"):
        read_models(str(tmp_path / "bad.yml"))


def test_test_sets_in_any_layout_detected_or_packed(setup: dict[str, Path], tmp_path: Path) -> None:
    """Rain100H as published with no layout named (detected), and the same pairs as an LMDB pair folder."""
    root = setup["root"]
    convert_dataset("rain100h", root / "rain100h", tmp_path / "packed", progress=False)
    sets = [SetSpec("Detected", str(root / "rain100h")), SetSpec("Packed", str(tmp_path / "packed"))]
    model = read_models(str(setup["models"]))[0]
    detected, packed = run_leaderboard([model], sets, ("basicsr",), progress=False)
    assert detected.images == packed.images == 3
    assert detected.psnr["basicsr"] == pytest.approx(packed.psnr["basicsr"], abs=1e-9)
    expected = _expected(
        root,
        "memd0.pth",
        [(f"rain100h/rainy/rain-{i:03d}.png", f"rain100h/norain-{i:03d}.png") for i in (1, 2, 3)],
        "basicsr",
    )
    assert detected.psnr["basicsr"] == pytest.approx(expected[0], abs=1e-9)
    (tmp_path / "odd").mkdir()
    cv2.imwrite(str(tmp_path / "odd" / "photo.png"), _image(np.random.default_rng(1)))
    with pytest.raises(ValueError, match=r"no known layout reads it \(it holds photo.png\); tried rain100h"):
        run_leaderboard([model], [SetSpec("Odd", str(tmp_path / "odd"))], ("basicsr",), progress=False)


def test_cli_end_to_end(setup: dict[str, Path], tmp_path: Path) -> None:
    common = ["tools/leaderboard.py", "--models", str(setup["models"]), "--testsets", str(setup["testsets"])]
    result = run_python(
        [
            *common,
            "--out",
            str(tmp_path),
            "--protocols",
            "matlab",
            "--matrix",
            "--reported",
            "docs/reported.yml",
            "--no-progress",
        ],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    table = _read_csv(tmp_path / "leaderboard.csv")
    assert [line["source"] for line in table[:4]] == ["measured"] * 4
    assert {line["PSNR (matlab)"] == "" for line in table[4:]} == {True}
    assert (tmp_path / "matrix.csv").is_file() and "PSNR (matlab)" in result.stdout
    bad = run_python([*common, "--out", str(tmp_path / "x"), "--protocols", "nope", "--no-progress"], cwd=REPO)
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: protocol 'nope'")
        and "basicsr, paper, matlab" in bad.stderr
    )
