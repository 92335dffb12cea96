"""The steps of ``make demo`` wired together on the real demo options, with a short training.

The full demo (2000 iterations, the 3 dB claim) is ``make demo`` itself; this keeps its wiring
tested in the suite: synthesize, LMDB, train MEMD through the plugin, evaluate, table and image.
"""

from pathlib import Path

import cv2
import pytest
from conftest import REPO, run_python


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path: Path) -> None:
    synth = run_python(
        [
            str(REPO / "tools/synthesize_rain.py"),
            "--out",
            "datasets/synthetic_rain",
            "--lmdb",
            "--no-progress",
        ],
        tmp_path,
    )
    assert synth.returncode == 0, synth.stderr
    short = [
        "--set",
        "train.total_iter=30",
        "--set",
        "val.val_freq=30",
        "--set",
        "logger.save_checkpoint_freq=30",
    ]
    train = run_python(
        ["-m", "erl_plugin.train", "-opt", str(REPO / "options/memd_demo.yml"), *short], tmp_path
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "End of training" in train.stderr and "# psnr:" in train.stderr
    checkpoint = tmp_path / "experiments/memd_demo/models/net_g_latest.pth"
    evaluate = run_python(
        [
            str(REPO / "tools/evaluate.py"),
            "--opt",
            str(REPO / "options/memd_demo.yml"),
            "--checkpoint",
            str(checkpoint),
            "--data",
            "datasets/synthetic_rain/test",
            "--out",
            "results/demo",
            "--label",
            "MEMD",
        ],
        tmp_path,
    )
    assert evaluate.returncode == 0, evaluate.stderr
    assert "| rainy input |" in evaluate.stdout and "| MEMD |" in evaluate.stdout
    assert "protocol basicsr" in evaluate.stdout and "dB (basicsr)" in evaluate.stdout
    assert len((tmp_path / "results/demo/scores.csv").read_text().splitlines()) == 1 + 8
    assert cv2.imread(str(tmp_path / "results/demo/comparison.png")) is not None
