"""tools/gpu_check.py: the dry run of every part on the CPU, the refusal without CUDA, time caps."""

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_python

from erl_dev.gpu_check import PARTS, Row, bf16_peak_tflops, part_status, run_units


@pytest.mark.slow
def test_dry_run_checks_every_part_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    result = run_python([str(REPO / "tools/gpu_check.py"), "--dry-run", "--out", str(out)], tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    progress = [line for line in result.stdout.splitlines() if line.startswith("[gpu_check]")]
    assert len(progress) == 2 * len(PARTS)  # one line as each part starts, one as it ends
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["passed"]
    parts = report["parts"]
    assert list(parts) == [name for name, _ in PARTS]
    assert {name: part["status"] for name, part in parts.items()} == {name: "ok" for name, _ in PARTS}

    correctness = {row["name"]: row for row in parts["correctness"]["rows"]}
    networks = [row for name, row in correctness.items() if name.endswith("forward + backward")]
    assert len(networks) == 4  # MEMD, CLGD, MLGD with inject decoder and encoder
    for row in networks:
        values = row["values"]
        assert values["output_max_abs_diff"] <= values["output_tolerance"]
        assert values["grad_max_abs_diff"] <= values["grad_tolerance"] and values["parameters_with_grad"] > 0
    steps = [row for name, row in correctness.items() if name.startswith("ERLModel step, ")]
    assert [row["name"].split(", ")[1] for row in steps] == ["teacher", "stage1", "stage2", "stage3"]
    assert all(math.isfinite(loss) for row in steps for loss in row["values"]["device"].values())
    checkpoints = [row for name, row in correctness.items() if name.startswith("checkpoint")]
    assert len(checkpoints) == 2 and all(row["values"]["output_ok"] for row in checkpoints)

    distributed = out / "distributed"
    experiment = distributed / "experiments/gpu_check_ddp"
    for name in ("net_t_teacher.pth", "memd_stage1.pth", "net_g_stage1.pth", "net_g_stage2.pth", "net_g_latest.pth"):
        assert (experiment / "models" / name).is_file(), name
    assert (experiment / "training_states/4.state").is_file() and (distributed / "gpu_check_ddp.yml").is_file()
    first, resumed = (log.read_text() for log in sorted(experiment.glob("train_gpu_check_ddp_*.log")))
    assert "World size (gpu number): 1" in first  # one process with the launcher, as on a one-GPU machine
    assert re.findall(r"Stage \d/4 '(\w+)'", first) == ["teacher", "stage1", "stage2", "stage3"]
    assert "Resuming training from epoch: " in resumed and ", iter: 4." in resumed and "End of training" in resumed

    speed = {row["name"]: row for row in parts["speed"]["rows"]}
    settings = ("fp32", "bf16", "bf16 + channels_last", "bf16 + channels_last + compile")
    trained = [f"train {model}, {setting}" for setting in settings for model in ("MEMD", "ERL stage II")]
    assert [name for name in speed if name.startswith("train ")] == trained
    compiled = speed["train ERL stage II, bf16 + channels_last + compile"]
    assert compiled["values"]["first_step_s"] > 0 and "(compilation)" in compiled["result"]
    assert "infer ERL-Net 64x64 tiled, bf16 + channels_last" in speed
    fidelity = {row["name"]: row for row in parts["fidelity"]["rows"]}
    assert set(fidelity) >= {"PSNR rainy input", "PSNR MEMD", "PSNR ERL-Net (MA_D + MLGD)", "PSNR ERL-Net - MEMD"}

    table = (out / "gpu_check.md").read_text()
    assert report["device"].startswith("CPU") and f"Device: {report['device']}" in table
    assert "| correctness | ok |" in table and "| distributed | ok |" in table and "protocol `basicsr`" in table
    assert table.strip() in result.stdout  # the same table, printed at the end


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
def test_without_cuda_the_gpu_run_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_python([str(REPO / "tools/gpu_check.py"), "--out", str(tmp_path / "gc")], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: no CUDA device") and "--dry-run" in result.stderr
    assert not (tmp_path / "gc").exists()


def test_a_step_past_the_cap_is_skipped_and_a_failing_step_fails_only_its_row() -> None:
    def fail() -> list[Row]:
        raise RuntimeError("CUDA error:\nillegal memory access")

    units = [
        ("fine", lambda: [Row("fine", "1 ms")]),
        ("fails", fail),
        ("slow", lambda: [Row("slow", str(time.sleep(5)))]),
        ("late", lambda: [Row("late")]),
    ]
    start = time.monotonic()
    rows, seconds = run_units(units, start + 0.5)
    assert time.monotonic() - start < 3
    assert [(row.name, row.status) for row in rows] == [
        ("fine", "ok"),
        ("fails", "failed: RuntimeError: CUDA error: illegal memory access"),
        ("slow", "skipped: time"),
        ("late", "skipped: time"),
    ]
    assert set(seconds) == {"fine", "fails", "slow"}
    assert part_status(rows) == "failed: fails: RuntimeError: CUDA error: illegal memory access"
    assert part_status(rows[2:]) == "skipped: time" and part_status(rows[:1]) == "ok"


def test_bf16_peaks_by_device_name() -> None:
    assert bf16_peak_tflops("NVIDIA H200") == bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0 and bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA GeForce RTX 3090") is None and bf16_peak_tflops("CPU (x86_64, 1 threads)") is None
