"""Every shipped options file names registered types and builds its network."""

from pathlib import Path

import pytest
from basicsr.archs import build_network
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY
from conftest import REPO

from erl_dev.study import load_study
from erl_plugin.engine.options import OptionsError, load_options, validate_options

OPTION_FILES = sorted((REPO / "options").rglob("*.yml"))


def test_there_are_train_and_test_options() -> None:
    names = {str(path.relative_to(REPO / "options")) for path in OPTION_FILES}
    assert {"memd_demo.yml", "memd_rain100h.yml", "test/memd_demo.yml", "test/memd_rain100h.yml"} <= names


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_options_file_is_consistent(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opt = load_options(str(path))
    if "runs" in opt and "seeds" in opt:  # a study file (tools/study.py), not training options
        monkeypatch.chdir(REPO)  # its paths are relative to the root
        study = load_study(str(path))
        assert study.runs[study.baseline].trained
        return
    assert opt["model_type"] in MODEL_REGISTRY
    assert all(dataset["type"] in DATASET_REGISTRY for dataset in opt["datasets"].values())
    net = build_network(dict(opt["network_g"]))
    assert sum(p.numel() for p in net.parameters()) > 0
    is_train = "train" in opt
    try:
        validate_options(opt, str(path), is_train=is_train)
    except OptionsError as error:  # run from the repo root, where the data sets are not laid out; the
        # converged study's forks get their networks from the study (start_from)
        assert any(key in str(error) for key in (".dataroot", "pretrain_network_g", "pretrain_network_t")), error


def test_rain100h_follows_the_paper() -> None:
    opt = load_options(str(REPO / "options/memd_rain100h.yml"))
    train = opt["datasets"]["train"]
    assert (train["gt_size"], train["batch_size_per_gpu"], train["use_hflip"], train["use_rot"]) == (
        320,
        1,
        False,
        False,
    )
    scheduler = opt["train"]["scheduler"]
    assert opt["train"]["optim_g"]["lr"] == 4e-4 and (scheduler["type"], scheduler["factor"]) == ("PlateauLR", 0.1)
    # the plateaus are found on training pairs held out from training, never on the test folder
    assert train["hold_out"] == {"share": 0.05, "keep": "rest"}
    assert opt["datasets"]["val"]["hold_out"] == {"share": 0.05, "keep": "held"}
    assert opt["network_g"]["num_down"] == 3
