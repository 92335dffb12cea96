"""The benchmark's parts run and report what they claim (timings themselves are not tested)."""

from erl_plugin.benchmark import loader_benchmark, loader_markdown, markdown, run_benchmark

BACKBONE = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


def test_model_benchmark_reports_every_stage_and_the_ratios() -> None:
    result = run_benchmark(BACKBONE, batch=1, patch=16, repeats=1, warmup=1)
    assert list(result["train_step_s"]) == ["MEMD", "teacher", "stage1", "stage2", "stage3"]
    assert result["train_step_ratio"]["MEMD"] == 1.0
    assert result["params"]["ERL-Net"] > result["params"]["MEMD"] > 0
    assert result["flops"]["ERL-Net"] > result["flops"]["MEMD"] > 0
    table = markdown(result)
    assert result["device"] in table and "| stage2 |" in table and "target <= 1.6" in table


def test_loader_benchmark_covers_folders_and_lmdb() -> None:
    result = loader_benchmark(patch=16, workers=(0,), images=2, batch=1, batches=2)
    assert set(result["patches_per_s"]) == {"folder, 0 workers", "lmdb, 0 workers"}
    assert all(rate > 0 for rate in result["patches_per_s"].values())
    assert "| lmdb, 0 workers |" in loader_markdown(result, "CPU")
