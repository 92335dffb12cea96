"""PlateauLR: the learning rate divided on a validation plateau, and the stop at the last one."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import plateau_options, run_python, write_options
from test_erl_training import erl_options, lr_by_iter

from erl_plugin.engine.options import scale_iterations
from erl_plugin.models.schedulers import PlateauLR
from erl_plugin.models.stages import check_optimizers, parse_stages


def schedule(**kwargs) -> PlateauLR:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    return PlateauLR(optimizer, **{"patience": 300, "min_gain": 0.05, "max_reductions": 2, "stop": True, **kwargs})


def test_divides_after_patience_without_gain_then_stops_at_the_last_rate() -> None:
    plateau = schedule()
    lr = lambda: plateau.optimizer.param_groups[0]["lr"]  # noqa: E731
    assert plateau.observe(20.0, 100) is None
    assert plateau.observe(20.04, 200) is None and plateau.best == 20.0  # below min_gain: not progress
    assert plateau.observe(20.10, 300) is None and plateau.best_iter == 300  # progress
    assert plateau.observe(20.12, 500) is None  # 200 iterations: still patient
    event = plateau.observe(20.13, 600)
    assert event.startswith("learning rate 0.001 -> 0.0001") and lr() == pytest.approx(1e-4)
    assert plateau.observe(20.14, 800) is None  # the window counts from the reduction
    assert plateau.observe(20.14, 900).startswith("learning rate 0.0001 -> 1e-05")
    assert plateau.observe(20.20, 1000) is None and plateau.best_iter == 1000
    assert plateau.observe(20.21, 1200) is None
    assert plateau.observe(20.22, 1300).startswith("plateau reached at iteration 1300")
    assert plateau.stopped_at == 1300 and plateau.observe(25.0, 1400) is None  # stopped is final

    restored = schedule()
    restored.load_state_dict(plateau.state_dict())
    assert restored.state_dict() == plateau.state_dict()
    assert [e["iter"] for e in plateau.events] == [600, 900, 1300]


def test_without_stop_the_last_rate_continues() -> None:
    plateau = schedule(stop=False, max_reductions=0)
    plateau.observe(20.0, 100)
    assert plateau.observe(20.0, 1000) is None and plateau.stopped_at is None
    assert plateau.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"factor": 1.5}, "factor: 1.5 must be a number in (0, 1)"),
        ({"patience": 0}, "patience: 0 must be a positive number of iterations"),
        ({"min_gain": -1}, "min_gain: -1 must be a number >= 0"),
        ({"max_reductions": 1.5}, "max_reductions: 1.5 must be an integer >= 0"),
        ({"stop": "yes"}, "stop: 'yes' must be true or false"),
    ],
)
def test_bad_arguments_are_named(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        schedule(**arguments)


@pytest.mark.slow
@pytest.mark.parametrize("save_every", [4, 3])  # a checkpoint at the stop's iteration, or none there
def test_training_stops_at_the_plateau_and_a_resume_stops_there_too(
    tmp_path: Path, tiny_lmdb: dict[str, str], save_every: int
) -> None:
    opt_file = write_options(tmp_path, plateau_options(tiny_lmdb, "plateau", save_every))
    first = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file)], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "erl-train: training ended: plateau reached at iteration 8: psnr has not gained 100" in first.stderr
    rates = lr_by_iter(first.stderr)
    assert max(rates) == 8 and (rates[4], rates[5], rates[7], rates[8]) == (
        "1.000e-03",
        "1.000e-04",
        "1.000e-05",
        "1.000e-05",
    )
    experiment = tmp_path / "experiments/plateau"
    records = [json.loads(line) for line in (experiment / "validation.jsonl").read_text().splitlines()]
    assert [(r["iter"], r["lr"]) for r in records] == [(2, 1e-3), (4, 1e-4), (6, 1e-5), (8, 1e-5)]
    assert [r["iter"] for r in records if "event" in r] == [4, 6, 8]
    latest = torch.load(experiment / "models/net_g_latest.pth", weights_only=True)["params"]

    # Resumed from its newest state: (3, 6) trains 7 and 8 again to the same stop; (4, 8) stops at once.
    copy = tmp_path / "experiments/plateau_again"
    shutil.copytree(experiment, copy)
    (copy / "models/net_g_latest.pth").unlink()
    resumed = run_python(
        ["-m", "erl_plugin.train", "-opt", str(opt_file), "--auto_resume", "--set", "name=plateau_again"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training ended:" in resumed.stderr and "plateau reached at iteration 8" in resumed.stderr
    assert sorted(lr_by_iter(resumed.stderr)) == ([7, 8] if save_every == 3 else [])
    again = torch.load(copy / "models/net_g_latest.pth", weights_only=True)["params"]
    assert all(torch.equal(again[k], latest[k]) for k in latest)


def test_start_up_refuses_a_plateau_schedule_it_cannot_follow(tiny_lmdb: dict[str, str]) -> None:
    opt = plateau_options(tiny_lmdb, "bad", 4)
    opt["train"]["scheduler"]["metric"] = "ssim"
    with pytest.raises(ValueError, match=r"scheduler.metric: 'ssim' is not in val.metrics \(psnr\)"):
        check_optimizers(opt)
    opt = plateau_options(tiny_lmdb, "bad", 4)
    opt["val"]["val_freq"] = 5
    with pytest.raises(ValueError, match="patience: 2 iterations is shorter than val.val_freq = 5"):
        check_optimizers(opt)
    opt = plateau_options(tiny_lmdb, "bad", 4)
    opt["model_type"] = "SRModel"
    with pytest.raises(ValueError, match="PlateauLR needs model_type DerainModel or ERLModel"):
        check_optimizers(opt)
    del opt["datasets"]["val"]
    opt["model_type"] = "DerainModel"
    with pytest.raises(ValueError, match="PlateauLR follows validation: add datasets.val"):
        check_optimizers(opt)


def test_patience_and_explicit_stages_scale_with_the_run() -> None:
    stages = [
        {"name": "a", "iters": 300, "scheduler": {"type": "PlateauLR", "patience": 100}},
        {"name": "b", "iters": 700},
    ]
    opt = {"train": {"total_iter": 1000, "scheduler": {"type": "PlateauLR", "patience": 400}, "stages": stages}}
    scaled = scale_iterations(opt, 0.5)["train"]
    assert scaled["scheduler"]["patience"] == 200 and scaled["stages"][0]["scheduler"]["patience"] == 50
    assert [s["iters"] for s in scaled["stages"]] == [150, 350] and scaled["total_iter"] == 500


@pytest.mark.slow
def test_a_stage_of_erl_net_follows_its_own_plateau_and_only_the_last_may_stop(
    tmp_path: Path, tiny_lmdb: dict[str, str]
) -> None:
    opt = erl_options(tiny_lmdb, "staged", [1, 2, 2, 6])  # stage3: iterations 6-11
    plateau = {"type": "PlateauLR", "metric": "psnr", "patience": 1, "min_gain": 100, "max_reductions": 1}
    opt["train"]["stage_options"]["stage3"] = {"scheduler": {**plateau, "stop": True}}
    opt["val"]["val_freq"] = 1
    result = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "experiments/staged/validation.jsonl").read_text().splitlines()]
    events = [(r["iter"], r["stage"], r["event"].split(":")[0]) for r in records if "event" in r]
    assert events == [(7, "stage3", "learning rate 0.001 -> 0.0001"), (8, "stage3", "plateau reached at iteration 8")]
    assert "training ended: plateau reached at iteration 8" in result.stderr

    opt["train"]["stage_options"]["stage2"] = {"scheduler": {**plateau, "stop": True}}
    with pytest.raises(ValueError, match="stage 'stage2': scheduler.stop: a plateau stop ends the whole run"):
        check_optimizers(opt, parse_stages(opt))
