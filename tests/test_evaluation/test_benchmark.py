"""The benchmark's parts run and report what they claim (timings themselves are not tested)."""

import json
from pathlib import Path

import torch
from conftest import REPO, run_python

from erl_dev.benchmark import fast_setting, loader_benchmark, loader_markdown, markdown, run_benchmark

BACKBONE = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


def test_benchmark_reports_every_stage_setting_size_and_target() -> None:
    result = run_benchmark(
        BACKBONE,
        batch=2,
        patch=16,
        sizes=[(24, 16)],
        infer_batches=[1, 2],
        parts=["train", "overhead", "inference"],
        repeats=1,
        warmup=1,
    )
    assert [s["name"] for s in result["settings"]] == ["fp32", "bf16 + channels_last"]
    stages = ["MEMD (DerainModel)", "teacher", "stage1", "stage2", "stage3"]
    assert list(result["train"]["fp32"]) == ["MEMD (SRModel)", *stages]
    assert list(result["train"]["bf16 + channels_last"]) == stages
    row = result["train"]["fp32"]["stage2"]
    assert row["imgs_per_s"] == 2 / row["step_s"] and row["peak_mib"] > 0
    assert set(result["overhead"]) == {"DerainModel", "ERLModel stage1"}
    inference = result["inference"]
    assert len(inference) == 2 * 2 * 2  # settings x models x batches
    first = inference[0]
    assert first["ms_per_megapixel"] == first["ms_per_image"] / (24 * 16 / 1e6)
    assert result["complexity"]["ERL-Net"]["params"] > result["complexity"]["MEMD"]["params"] > 0
    table = markdown(result)
    assert (
        result["device"] in table
        and "| stage2 |" in table
        and "| ERL-Net | 24x16 | 2 | bf16 + channels_last |" in table
    )
    assert "- DerainModel / SRModel step on MEMD (fp32): " in table and "target <= 1.05" in table
    assert "(a GPU target; measured on the CPU)" in table


def test_fast_setting_is_named_after_what_it_turns_on() -> None:
    assert fast_setting().name == "bf16 + channels_last"
    assert fast_setting("fp16", False, {}).name == "fp16 + compile"


def test_loader_benchmark_covers_folders_lmdb_and_rain_on_the_fly() -> None:
    result = loader_benchmark(patch=16, workers=(0, 1), images=2, batch=1, batches=2)
    sources = ("folder", "lmdb", "on the fly (wide rain)")
    assert set(result["patches_per_s"]) == {f"{source}, {n} workers" for source in sources for n in (0, 1)}
    assert all(rate > 0 for rate in result["patches_per_s"].values())
    table = loader_markdown(result, "CPU")
    assert "| lmdb, 0 workers |" in table and "| on the fly (wide rain), 1 workers |" in table


def test_one_command_writes_json_and_markdown(tmp_path: Path) -> None:
    args = ["--num-feat", "4", "--num-dense-layers", "1", "--growth-rate", "4", "--batch", "1", "--patch", "16"]
    args += ["--sizes", "16x16", "--infer-batches", "1", "--workers", "0", "--loader-images", "2", "--repeats", "1"]
    args += ["--warmup", "0", "--json", "b.json", "--markdown", "b.md"]
    result = run_python([str(REPO / "tools/benchmark.py"), *args], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data) >= {"device", "torch", "train", "overhead", "inference", "loader", "complexity", "command"}
    assert data["loader"]["consumption"]["imgs_per_s"] > 0
    text = (tmp_path / "b.md").read_text()
    assert text.startswith("Command: `python tools/benchmark.py --num-feat 4") and "torch " in text
    assert "- loader lmdb, 0 workers / training consumption" in text
    assert "benchmark: training, fp32 on CPU" in result.stderr and "benchmark: data loader done" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b.json", "b.md"]  # only what was asked for
    bad = run_python([str(REPO / "tools/benchmark.py"), "--amp", "fp8"], tmp_path)
    assert bad.returncode == 2 and "--amp: 'fp8' is not a precision; allowed: fp32, bf16, fp16, none" in bad.stderr
    if not torch.cuda.is_available():
        gpu = run_python([str(REPO / "tools/benchmark.py"), "--device", "cuda"], tmp_path)
        assert gpu.returncode == 2 and gpu.stderr.strip() == (
            "error: --device cuda, but CUDA is not available on this machine; use --device cpu"
        )
