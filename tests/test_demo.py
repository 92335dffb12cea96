"""`make demo` wired together on the real demo study, with iterations scaled down.

The full demo (the study's settings, about 1100 iterations per run) is ``make demo`` itself; this keeps its
wiring tested: the generalization splits, the study file, both trainings through the plugin, the scores on
the test split and the line that states ERL-Net - MEMD with its protocol.
"""

import re
from pathlib import Path

import pytest
from conftest import REPO, run_python

from erl_plugin.data.synthetic_dataset import synthesize_generalization_splits


@pytest.mark.slow
def test_demo_study_end_to_end(tmp_path: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "tools/study.py options/study/demo.yml" in makefile and "--generalization" in makefile
    (tmp_path / "options").symlink_to(REPO / "options")  # the study's paths are relative to the root, as BasicSR's
    synthesize_generalization_splits(
        tmp_path / "datasets/rain_generalization", val_per_photo=1, val_size=32, test_variants=1, progress=False
    )
    command = [str(REPO / "tools/study.py"), "options/study/demo.yml", "--iters-scale", "0.005"]
    result = run_python([*command, "--min-gain-db", "-100"], tmp_path, {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = re.search(
        r"ERL-Net \(MA_B \+ MLGD, aligned teacher\) - MEMD, iterations of stages I-II: ([-+]\d+\.\d\d) dB PSNR",
        result.stdout,
    )
    assert line and "on test (basicsr protocol, 1 seed(s))" in result.stdout
    assert "| rainy input |" in result.stdout and (tmp_path / "studies/demo_x0.005/validation.png").is_file()
    assert "## Headroom when the feature loss starts" in result.stdout  # the premise, measured and reported
