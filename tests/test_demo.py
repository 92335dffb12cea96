"""The steps of ``make demo`` wired together on the real demo options, with short stages.

The full demo (3300 iterations, the 3 dB claim) is ``make demo`` itself; this keeps its wiring
tested in the suite: synthesize, LMDB, train the whole MA_D pipeline through the plugin, evaluate
MEMD (end of stage I) and ERL-Net (final) against the rainy input, table and image.
"""

import csv
from pathlib import Path

import cv2
import pytest
from conftest import REPO, run_python

OPTIONS = str(REPO / "options/erl_demo.yml")


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path: Path) -> None:
    synth = [str(REPO / "tools/synthesize_rain.py"), "--out", "datasets/synthetic_rain", "--lmdb", "--no-progress"]
    assert run_python(synth, tmp_path).returncode == 0
    short = ["--set", "train.stage_iters=[4, 12, 6, 6]", "--set", "train.total_iter=28"]
    short += ["--set", "val.val_freq=28", "--set", "logger.print_freq=1"]
    train = run_python(["-m", "erl_plugin.train", "-opt", OPTIONS, *short], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert train.stderr.count("Stage ") >= 4 and "l_fre:" in train.stderr and "End of training" in train.stderr
    models = tmp_path / "experiments/erl_demo/models"
    evaluate = [
        str(REPO / "tools/evaluate.py"),
        *("--data", "datasets/synthetic_rain/test", "--out", "results/demo"),
        *("--model", "MEMD", OPTIONS, str(models / "memd_stage1.pth")),
        *("--model", "ERL-Net", OPTIONS, str(models / "net_g_latest.pth")),
    ]
    result = run_python(evaluate, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "protocol basicsr" in result.stdout and "dB PSNR over the rainy input (basicsr)" in result.stdout
    rows = list(csv.DictReader((tmp_path / "results/demo/scores.csv").open()))
    assert len(rows) == 8
    # Real training gives each model its own numbers, different from the input's and each other's.
    columns = ["rainy PSNR (basicsr)", "MEMD PSNR (basicsr)", "ERL-Net PSNR (basicsr)"]
    assert len({tuple(row[c] for row in rows) for c in columns}) == 3
    assert cv2.imread(str(tmp_path / "results/demo/comparison.png")).shape[1] == 4 * 256
