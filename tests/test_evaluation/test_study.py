"""tools/study.py: iteration scaling, study files, the statistics, and a tiny study trained end to end."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_python

from erl_dev.study import (
    StudyError,
    bootstrap_interval,
    format_report,
    load_study,
    result_path,
    short_of_gain,
    summarize,
    trained_iterations,
)
from erl_plugin.data.synthetic_dataset import synthesize_generalization_splits
from erl_plugin.engine.options import OptionsError, load_options, scale_iterations

STUDY = str(REPO / "tools/study.py")


def test_scale_iterations_scales_every_count_together():
    opt = scale_iterations(load_options(str(REPO / "options/study/erl.yml")), 0.5)
    train = opt["train"]
    assert train["stage_iters"] == [50, 250, 125, 125] and train["total_iter"] == 550
    assert train["scheduler"]["milestones"] == [150, 212]
    assert train["stage_options"]["teacher"]["scheduler"]["milestones"] == [30, 42]
    assert train["stage_options"]["stage2"]["scheduler"]["milestones"] == [75]
    # 11 validations at full scale; scaled down, at most 10 (a validation costs the same at any scale)
    assert opt["val"]["val_freq"] == 55 and opt["logger"]["save_checkpoint_freq"] == 125
    tiny = scale_iterations(load_options(str(REPO / "options/study/memd.yml")), 0.001)
    assert tiny["train"]["total_iter"] == 1 and tiny["train"]["scheduler"]["milestones"] == [1, 1]
    with pytest.raises(OptionsError, match="iters_scale 0 must be a number > 0"):
        scale_iterations(opt, 0)


def test_a_run_scaled_down_validates_and_saves_about_ten_times_and_keeps_two_checkpoints():
    """The flagship at 1e-4 (122 iterations) validated and saved 61 times each, as its file spaces them."""
    flagship = load_options(str(REPO / "options/erl_rain100h.yml"))
    opt = scale_iterations(flagship, 1e-4)
    assert opt["train"]["total_iter"] == 122 and opt["val"]["val_freq"] == opt["logger"]["save_checkpoint_freq"] == 13
    assert opt["logger"]["keep_last"] == 2 and "keep_last" not in flagship["logger"]
    assert (
        scale_iterations({**flagship, "logger": {**flagship["logger"], "keep_last": 5}}, 1e-4)["logger"]["keep_last"]
        == 5
    )  # a keep_last of the file's own stays
    plateau = {"type": "PlateauLR", "metric": "psnr", "patience": 40}
    opt = scale_iterations({"train": {"total_iter": 1000, "scheduler": plateau}, "val": {"val_freq": 10}}, 0.1)
    assert opt["val"]["val_freq"] == 10 and opt["train"]["scheduler"]["patience"] == 10  # one validation apart
    assert scale_iterations(flagship, 2)["val"]["val_freq"] == 40000  # scaled up: spacing as the file's
    assert "keep_last" not in scale_iterations(flagship, 2)["logger"]


def test_the_converged_study_forks_every_phase_b_arm_from_phase_a():
    study = load_study(str(REPO / "options/study/converged.yml"))
    assert study.runs["teacher"].depends_on == ("memd",) and not study.runs["teacher"].score
    assert study.runs["erl_paper_lambda"].start_from == {"network_g": "memd", "network_t": "teacher"}
    arms = [name for name in study.runs if name not in ("memd", "teacher") and not name.endswith("_r2")]
    assert all(study.runs[name].start_from["network_g"] == "memd" for name in arms)
    # Round 2: round 1's B0 trained to a second plateau, then the teacher and every arm forked from it.
    assert study.runs["memd_r2"].start_from == {"network_g": "memd_continued"}
    assert study.runs["erl_balanced_r2"].start_from == {"network_g": "memd_r2", "network_t": "teacher_r2"}
    round_2 = [name for name in study.runs if name.endswith("_r2") and name != "memd_r2"]
    assert len(round_2) == 5 and all(study.runs[name].start_from["network_g"] == "memd_r2" for name in round_2)
    assert all(len(study.runs[name].seeds) >= 2 for name in study.runs)


def test_the_shipped_study_file_parses():
    study = load_study(str(REPO / "options/study/fidelity.yml"))
    assert study.baseline == "memd_equal_iters" and study.reference == "erl" and study.seeds == (0, 1, 2)
    assert study.runs["memd_stage1"].depends_on == ("erl",)
    assert study.runs["memd_equal_time"].depends_on == ("erl", "memd_equal_iters")
    assert all(len(study.runs[name].seeds) == 3 for name in ("erl", "memd_equal_iters", "dt", "memd_equal_time"))
    assert all(len(run.seeds) >= 2 for run in study.runs.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown key(s) ['colour']"),
        ({"baseline": "nothing"}, "baseline 'nothing' is not a run"),
        ({"seeds": [1, 1]}, "repeat a seed"),
        ({"runs": {"a": {"options": "nowhere.yml"}}}, "runs.a.options: nowhere.yml not found"),
        ({"runs": {"a": {"from_run": "b"}}}, "depends on 'b', which is not a trained run"),
        ({"runs": {"a": {"options": "OPT", "seeds": [5]}}}, "runs.a.seeds: [5] must be a non-empty subset"),
        ({"runs": {"a": {"options": "OPT", "from_run": "a"}}}, "give either options"),
        ({"runs": {"a": {"options": "OPT", "speed": 2}}}, "runs.a: unknown key(s) ['speed']"),
        ({"test_sets": ["odd=."]}, "test_sets[0]: .: no known layout reads it"),
        ({"runs": {"a": {"options": "OPT", "start_from": {"net": "a"}}}}, "runs.a.start_from: expected"),
        ({"runs": {"a": {"options": "OPT", "start_from": {"network_g": "b"}}}}, "depends on 'b', which is not"),
        ({"runs": {"a": {"options": "OPT", "score": "no"}}}, "runs.a.score: 'no' must be true or false"),
        ({"runs": {"a": {"options": "OPT", "score": False}}}, "baseline 'a' is not scored"),
        ({"contrasts": [["a", "b"]]}, "contrasts: [['a', 'b']] must be a list of [run, run] pairs"),
    ],
)
def test_bad_study_files_are_refused_naming_the_key(tmp_path: Path, change: dict, message: str):
    val = {"name": "val", "layout": "rain100h", "dataroot": "val"}
    raw = {"name": "s", "seeds": [0], "baseline": "a", "selection_set": val, "runs": {"a": {"options": "OPT"}}}
    raw.update(change)
    text = yaml.safe_dump(raw).replace("OPT", str(REPO / "options/study/memd.yml"))
    path = tmp_path / "study.yml"
    path.write_text(text)
    with pytest.raises(StudyError) as error:
        load_study(str(path))
    assert message in str(error.value) and str(path) in str(error.value)


def test_bootstrap_interval_covers_a_clear_shift_and_zero_for_noise():
    rng = np.random.default_rng(0)
    shifted = 0.5 + rng.normal(0, 0.3, (3, 40))
    low, high = bootstrap_interval(shifted, np.random.default_rng(1), samples=2000)
    assert 0.3 < low < shifted.mean() < high < 0.7
    low, high = bootstrap_interval(rng.normal(0, 0.3, (3, 40)), np.random.default_rng(1), samples=2000)
    assert low < 0 < high


def _fake_result(out: Path, run: str, seed: int, psnr: list[float]) -> None:
    images = {f"rain-{i + 1}": {"psnr": value, "ssim": 0.5} for i, value in enumerate(psnr)}
    record = {
        "run": run,
        "seed": seed,
        "train_seconds": 60.0,
        "cpu_seconds": 55.0,
        "iterations": 10,
        "validation": [],
        "scores": {"val": {"protocol": "basicsr", "images": images}},
    }
    path = result_path(out, run, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_summary_pairs_by_seed_and_image(tmp_path: Path):
    memd = str(REPO / "options/study/memd.yml")
    raw = {
        "name": "s",
        "seeds": [0, 1],
        "baseline": "base",
        "selection_set": {"name": "val", "layout": "rain100h", "dataroot": "somewhere/val"},
        "runs": {"base": {"options": memd}, "better": {"options": memd}},
        "contrasts": [["better", "base"]],
    }
    (tmp_path / "study.yml").write_text(yaml.safe_dump(raw))
    study = load_study(str(tmp_path / "study.yml"))
    for seed in (0, 1):
        _fake_result(tmp_path, "base", seed, [20.0 + seed, 22.0, 24.0])
        _fake_result(tmp_path, "better", seed, [20.5 + seed, 22.5, 23.9])
    rainy = {"val": {"images": {f"rain-{i}": {"psnr": 15.0, "ssim": 0.4} for i in (1, 2, 3)}}}
    summary = summarize(study, tmp_path, rainy)
    better = summary["sets"]["val"]["better"]["groups"]["all"]
    assert better["vs"]["base"]["delta"] == pytest.approx((0.5 + 0.5 - 0.1) / 3)
    assert better["vs"]["base"]["improved_share"] == pytest.approx(2 / 3)
    assert better["psnr_std"] == pytest.approx(np.std([66.9 / 3, 67.9 / 3], ddof=1))
    (contrast,) = summary["contrasts"]["val"]
    assert contrast["runs"] == ["better", "base"] and contrast["per_seed"] == pytest.approx([0.3, 0.3])
    assert short_of_gain(study, summary, 7.0) == []  # no test set: nothing to fall short on
    summary["rainy"]["test"] = {"all": {"psnr": 20.0, "ssim": 0.4}}
    summary["sets"]["test"] = summary["sets"]["val"]
    study = dataclasses.replace(study, test_sets=({"name": "test"},))
    assert short_of_gain(study, summary, 2.3) == ["base gains +2.17 dB over the rainy input on test"]
    report = format_report(study, summary, "test machine")
    assert "| better | 2 | 22.47 ± 0.24 |" in report and "+0.30 [" in report and "| 67% |" in report
    assert "protocol" in report.lower() and "| rainy input | - | 15.00 |" in report
    assert "| `val` | better - base | 2 | +0.30 [" in report and "| +0.30, +0.30 |" in report


@pytest.mark.slow
def test_a_tiny_study_trains_scores_reports_and_resumes(tmp_path: Path):
    splits = tmp_path / "datasets/rain_generalization"
    synthesize_generalization_splits(
        splits, val_per_photo=1, val_size=32, test_variants=1, test_max_side=64, progress=False
    )
    tiny_net = {
        "network_g.backbone.num_feat": 4,
        "network_g.backbone.num_dense_layers": 1,
        "network_g.backbone.growth_rate": 4,
        "val.val_freq": 700,  # scaled by 0.006: every 4th iteration
    }
    erl, memd = str(REPO / "options/study/erl.yml"), str(REPO / "options/study/memd.yml")
    study = {
        "name": "tiny",
        "seeds": [0],
        "baseline": "memd",
        "iters_scale": 0.006,  # ERL-Net: stages 1/3/2/2, MEMD 6 iterations
        "jobs": 2,
        "selection_set": {"name": "val", "layout": "rain100h", "dataroot": str(splits / "val")},
        "test_sets": [{"name": "test", "layout": "rain100h", "dataroot": str(splits / "test")}],
        "runs": {
            "erl": {"options": erl, "set": tiny_net},
            "memd": {"options": memd, "set": {k.replace("backbone.", ""): v for k, v in tiny_net.items()}},
            "stage1": {"from_run": "erl", "checkpoint": "memd_stage1.pth"},
            "memd_on": {  # starts from memd's banked network
                "options": memd,
                "set": {k.replace("backbone.", ""): v for k, v in tiny_net.items()},
                "start_from": {"network_g": "memd"},
            },
            "memd_time": {
                "options": memd,
                "set": {k.replace("backbone.", ""): v for k, v in tiny_net.items()},
                "equal_time": {"to": "erl", "rate_from": "memd"},
            },
        },
    }
    (tmp_path / "study.yml").write_text(yaml.safe_dump(study, sort_keys=False))
    extra = ["--data", f"extra={splits / 'test'}"]
    first = run_python([STUDY, "study.yml", *extra], tmp_path, {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "0 of 5 runs finished, 5 to go, 2 at a time" in first.stdout and "(5 of 5 finished)" in first.stdout
    out = tmp_path / "studies/tiny"
    results = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert sorted(results) == ["erl_s0", "memd_on_s0", "memd_s0", "memd_time_s0", "stage1_s0"]
    banked = "studies/tiny/checkpoints/memd_s0.pth"  # relative to the study's root, as the study file's paths
    assert results["memd_s0"]["banked"] == banked
    assert (tmp_path / banked).read_bytes() == (tmp_path / results["memd_s0"]["checkpoint"]).read_bytes()
    assert results["memd_on_s0"]["options"]["path"]["pretrain_network_g"] == banked
    assert set(results["erl_s0"]["scores"]) == {"val", "test", "extra"}
    assert len(results["erl_s0"]["scores"]["test"]["images"]) == 4
    assert results["erl_s0"]["validation"] and results["erl_s0"]["train_seconds"] >= 0
    assert results["erl_s0"]["cpu_seconds"] > 0
    assert results["stage1_s0"]["checkpoint"].endswith("memd_stage1.pth")
    assert results["memd_time_s0"]["iterations"] >= 1
    report = (out / "report.md").read_text()
    for text in (
        "## `test`, shifted rain",
        "## `test`, wide rain",
        "## `extra`",
        "Δ PSNR vs `memd`",
        "Protocol: basicsr",
    ):
        assert text in report
    assert (out / "validation.png").stat().st_size > 0
    # Run again with every run finished (a fresh clone of a finished study): the report is not rewritten.
    written = {name: (out / name).stat().st_mtime_ns for name in ("report.md", "report.json", "validation.png")}
    again = run_python([STUDY, "study.yml", *extra], tmp_path, {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert again.returncode == 0 and "left as it is: it already says this" in again.stdout, again.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    # The folder keeps one scale: the same study at another is refused, not mixed in.
    other = run_python([STUDY, "study.yml", "--iters-scale", "0.5", "--report-only", "--out", str(out)], tmp_path)
    assert other.returncode == 2 and "at iters_scale 0.006, not 'tiny' at 0.5" in other.stderr
    quick = run_python([STUDY, "study.yml", "--iters-scale", "0.5", "--report-only"], tmp_path)
    assert quick.returncode == 0 and "report: studies/tiny_x0.5/report.md" in quick.stdout, quick.stderr
    (out / "runs/memd_time_s0.json").unlink()  # as if the study had been killed during that run
    # A later sitting without the experiment folders: the fork starts from the banked network.
    (out / "runs/memd_on_s0.json").unlink()
    shutil.rmtree(tmp_path / "experiments/study_tiny_memd_on_s0_x0.006")
    shutil.rmtree(tmp_path / "experiments/study_tiny_memd_s0_x0.006")
    second = run_python([STUDY, "study.yml", *extra], tmp_path, {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "3 of 5 runs finished, 2 to go" in second.stdout and "memd_time seed 0: started" in second.stdout
    assert "memd_on seed 0: started" in second.stdout
    assert "erl seed 0: started" not in second.stdout
    assert all(
        (out / "runs" / name).stat().st_mtime_ns == mtime
        for name, mtime in kept.items()
        if name not in ("memd_time_s0.json", "memd_on_s0.json")
    )
    # Another study file of the same name, whose MEMD is wider: its runs are not these; nothing is reported.
    study["runs"]["memd"]["set"]["network_g.num_feat"] = 8
    (tmp_path / "other.yml").write_text(yaml.safe_dump(study, sort_keys=False))
    before = (out / "report.md").read_bytes()
    clash = run_python([STUDY, "other.yml", "--report-only"], tmp_path)
    assert clash.returncode == 2, clash.stderr
    assert "run 'memd' seed 0 was trained with network_g.num_feat: 4, but other.yml gives network_g.num_feat: 8" in (
        clash.stderr
    )
    assert (out / "report.md").read_bytes() == before


def test_an_unfinished_run_parked_resumes_in_a_later_sitting_to_the_same_weights(tmp_path: Path):
    splits = tmp_path / "datasets/rain_generalization"
    synthesize_generalization_splits(
        splits, val_per_photo=1, val_size=32, test_variants=1, test_max_side=64, progress=False
    )
    tiny = {"network_g.num_feat": 4, "network_g.num_dense_layers": 1, "network_g.growth_rate": 4}
    study = {
        "name": "parking",
        "seeds": [0],
        "baseline": "memd",
        "iters_scale": 0.006,  # 6 iterations, a checkpoint every 2 (keep_last is not set: all kept)
        "selection_set": {"name": "val", "layout": "rain100h", "dataroot": str(splits / "val")},
        "runs": {"memd": {"options": str(REPO / "options/study/memd.yml"), "set": tiny}},
    }
    (tmp_path / "study.yml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = {"OMP_NUM_THREADS": "1"}
    assert run_python([STUDY, "study.yml"], tmp_path, env, timeout=600).returncode == 0
    experiment = tmp_path / "experiments/study_parking_memd_s0_x0.006"
    uninterrupted = torch.load(experiment / "models/net_g_latest.pth", weights_only=True)["params"]

    # As if the sitting had ended after iteration 4: no result, nothing newer than 4.
    out = tmp_path / "studies/parking"
    (out / "runs/memd_s0.json").unlink()
    for path in [*experiment.glob("training_states/6.state"), *experiment.glob("models/*_6.pth")]:
        path.unlink()
    (experiment / "models/net_g_latest.pth").unlink()
    parked = run_python([STUDY, "study.yml", "--park"], tmp_path)
    assert parked.returncode == 0 and "parked study_parking_memd_s0_x0.006 (iteration 4)" in parked.stdout
    kept = out / "parked/study_parking_memd_s0_x0.006"
    assert sorted(p.name for p in kept.rglob("*") if p.is_file()) == [
        "4.state", "net_g_4.pth", "study_attempts.json", "validation.jsonl"
    ]  # fmt: skip

    shutil.rmtree(tmp_path / "experiments")  # the next sitting's checkout has no experiments/
    again = run_python([STUDY, "study.yml"], tmp_path, env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = torch.load(experiment / "models/net_g_latest.pth", weights_only=True)["params"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert "Resuming training from epoch: 0, iter: 4." in (out / "logs/memd_s0.log").read_text()
    assert not kept.exists()  # the finished run's network is in checkpoints/ now


def test_a_run_stopped_at_its_plateau_counts_the_iterations_it_trained():
    validation = [{"iter": 500}, {"iter": 1000, "event": "learning rate 0.001 -> 0.0001: ..."}]
    record = {"iterations": 60000, "validation": validation}
    assert trained_iterations(record) == 60000
    validation.append({"iter": 1500, "event": "plateau reached at iteration 1500: ..."})
    assert trained_iterations(record) == 1500
