"""erl-train's and erl-test's pipelines, called in this process.

They depend on no import order and patch nothing, so the suite calls them as a library would: several
runs in one process, each with its own log file, leaving BasicSR's classes as upstream and nothing of
one run in the next.
"""

from pathlib import Path

import pytest
import torch
from basicsr.models.base_model import BaseModel
from basicsr.models.sr_model import SRModel
from conftest import tiny_options, write_options

from erl_plugin.test import main as run_erl_test
from erl_plugin.train import main as run_erl_train
from erl_plugin.utils.checkpoint import safe_load


@pytest.fixture
def one_thread():
    """Runs here share the suite's process: give its thread count back afterwards."""
    threads = torch.get_num_threads()
    yield ["--threads", "1"]
    torch.set_num_threads(threads)


def test_two_runs_in_one_process_are_the_same_run(
    tmp_path: Path, tiny_lmdb: dict[str, str], monkeypatch: pytest.MonkeyPatch, one_thread: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    upstream = (BaseModel.save_network, BaseModel.load_network, SRModel.dist_validation)
    for name in ("first", "second"):
        opt_file = write_options(tmp_path, tiny_options(tiny_lmdb, name=name, total_iter=3), f"{name}.yml")
        assert run_erl_train(["-opt", str(opt_file), *one_thread]) == 0
    assert (BaseModel.save_network, BaseModel.load_network, SRModel.dist_validation) == upstream
    first, second = (safe_load(str(tmp_path / f"experiments/{n}/models/net_g_latest.pth")) for n in ("first", "second"))
    for key, value in first["params"].items():
        assert torch.equal(value, second["params"][key]), key  # no RNG, state or option of run 1 reached run 2
    for name, other in (("first", "second"), ("second", "first")):
        (log,) = (tmp_path / "experiments" / name).glob(f"train_{name}_*.log")
        text = log.read_text()
        assert "Validation tiny_test" in text and "End of training" in text
        assert f"name: {other}" not in text  # each run writes its own file only
        state = safe_load(str(tmp_path / f"experiments/{name}/training_states/3.state"))
        assert state["files"].keys() == {"net_g_3.pth"} and state["data"]["batch"] >= 1  # exact-resume state
        kept = (tmp_path / f"experiments/{name}/{name}.yml").read_text()
        assert kept.startswith("# GENERATE TIME: ") and f"name: {name}" in kept


def test_erl_test_in_process_scores_a_trained_model(
    tmp_path: Path, tiny_lmdb: dict[str, str], monkeypatch: pytest.MonkeyPatch, one_thread: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    opt = tiny_options(tiny_lmdb, name="scored", total_iter=2)
    assert run_erl_train(["-opt", str(write_options(tmp_path, opt, "train.yml")), *one_thread]) == 0
    opt.pop("train")
    opt["datasets"] = {"test_1": {**opt["datasets"]["val"], "name": "tiny_test"}}
    opt["path"]["pretrain_network_g"] = str(tmp_path / "experiments/scored/models/net_g_latest.pth")
    assert run_erl_test(["-opt", str(write_options(tmp_path, opt, "test.yml")), *one_thread]) == 0
    (log,) = (tmp_path / "results/scored").glob("test_scored_*.log")
    assert "Testing tiny_test..." in log.read_text() and "# psnr: " in log.read_text()
