"""Speed options: precision names, fallbacks, and what DerainModel/ERLModel compute with them.

Numerics: a bf16 (+ channels_last) training step of every MA_D stage gives the fp32 loss within 1%
(relative) and outputs within 0.05 (max abs, images in [0, 1]) when both start from the same weights.
"""

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from basicsr.models.sr_model import SRModel
from conftest import tiny_options
from test_models.test_erl_model import model_options

from erl_plugin.archs import MEMD
from erl_plugin.engine.options import OptionsError, validate_options
from erl_plugin.evaluation.inference import derain_paths
from erl_plugin.models import DerainModel, ERLModel
from erl_plugin.models.nonfinite import NonFiniteLossError
from erl_plugin.utils import speed

BACKBONE = {"type": "MEMD", "num_feat": 8, "num_dense_layers": 1, "growth_rate": 8}
LOSS_RTOL = 1e-2
OUTPUT_ATOL = 5e-2


def erl_model(folder: Path, **speed_options: object) -> ERLModel:
    """A tiny MA_D ERLModel (two iterations per stage) with ``train.amp`` and top-level speed options."""
    opt = model_options(folder, "MA_D")
    opt["network_g"]["backbone"] = BACKBONE
    opt["train"]["amp"] = speed_options.pop("amp", "none")
    opt.update(speed_options)
    torch.manual_seed(0)
    return ERLModel(opt)


def memd_options(model_type: str, **train: object) -> dict:
    return {
        "name": "memd",
        "model_type": model_type,
        "is_train": True,
        "dist": False,
        "num_gpu": 0,
        "rank": 0,
        "world_size": 1,
        "network_g": dict(BACKBONE),
        "path": {},
        "train": {
            "optim_g": {"type": "Adam", "lr": 1e-3},
            "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
            **train,
        },
    }


def batch(size: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {key: torch.rand(2, 3, size, size, generator=generator) for key in ("lq", "gt")}


def test_unknown_precision_and_compile_keys_list_the_allowed_ones(tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb)
    opt["model_type"] = "DerainModel"
    for change, message in (
        (lambda o: o["train"].update(amp="fp8"), r"train.amp: 'fp8' is not a precision; allowed: fp32, bf16, fp16"),
        (lambda o: o["val"].update(amp="half"), r"val.amp: 'half' is not a precision; allowed: fp32, bf16"),
        (lambda o: o.update(compile={"backnd": "eager"}), r"compile: unknown key\(s\) \['backnd'\]; allowed: backend"),
        (lambda o: o.update(compile="yes"), r"compile: 'yes' must be true, false or a mapping"),
        (lambda o: o.update(channels_last="on"), r"channels_last: 'on' must be true or false"),
    ):
        bad = copy.deepcopy(opt)
        change(bad)
        with pytest.raises(OptionsError, match=f"^x.yml: {message}"):
            validate_options(bad, "x.yml", is_train=True)
    validate_options({**opt, "channels_last": True, "compile": {"backend": "eager"}}, "x.yml", is_train=True)


def test_speed_options_on_a_model_that_ignores_them_are_refused(tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb)
    opt["train"]["amp"] = "bf16"
    with pytest.raises(OptionsError, match="train.amp: model_type SRModel runs fp32 eagerly only; use model_type: De"):
        validate_options(opt, "x.yml", is_train=True)
    opt["train"]["amp"] = "none"
    validate_options(opt, "x.yml", is_train=True)


def test_fp16_off_cuda_warns_and_bf16_runs_on_the_cpu() -> None:
    with pytest.warns(RuntimeWarning, match="train.amp: fp16 needs CUDA; running fp32 on cpu"):
        assert speed.resolve_precision("fp16", "cpu", "train.amp") is None
    assert speed.resolve_precision("bf16", "cpu") is torch.bfloat16
    assert speed.resolve_precision("none", "cpu") is None and speed.resolve_precision("fp32", "cpu") is None


def test_compile_where_unavailable_warns_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import _dynamo

    monkeypatch.setattr(_dynamo, "is_dynamo_supported", lambda: False)
    net = MEMD(**{k: v for k, v in BACKBONE.items() if k != "type"})
    with pytest.warns(RuntimeWarning, match="compile: torch.compile does not support .*; running MEMD eagerly"):
        speed.prepare_network(net, torch.device("cpu"), channels_last=True, compile_options={})
    assert net._compiled_call_impl is None
    assert net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_derain_model_without_speed_options_is_srmodel(tmp_path: Path) -> None:
    models = []
    for model_type, cls in (("SRModel", SRModel), ("DerainModel", DerainModel)):
        torch.manual_seed(0)
        model = cls(memd_options(model_type))
        model.feed_data(batch())
        model.optimize_parameters(1)
        models.append(model)
    reference, ours = (model.net_g.state_dict() for model in models)
    assert all(torch.equal(reference[key], ours[key]) for key in reference)
    assert models[0].log_dict == models[1].log_dict


def test_derain_model_fp16_on_cpu_trains_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="fp16 needs CUDA"):
        model = DerainModel(memd_options("DerainModel", amp="fp16"))
        model.feed_data(batch())
        model.optimize_parameters(1)
    assert model.train_dtype is None and not model.grad_scaler.is_enabled()
    assert np.isfinite(model.log_dict["l_pix"])


def test_bf16_channels_last_step_matches_fp32_in_every_stage(tmp_path: Path) -> None:
    reference = erl_model(tmp_path)
    fast = erl_model(tmp_path, amp="bf16", channels_last=True)
    assert fast.train_dtype is torch.bfloat16
    data = batch()
    for current_iter in range(1, reference.opt["train"]["total_iter"] + 1):
        for model in (reference, fast):
            model.update_learning_rate(current_iter)
            model.feed_data(data)
        # Both steps start from the same weights, so each stage's difference is one step's.
        fast.net_g.load_state_dict(reference.get_bare_model(reference.net_g).state_dict())
        fast.net_t.load_state_dict(reference.get_bare_model(reference.net_t).state_dict())
        reference.optimize_parameters(current_iter)
        fast.optimize_parameters(current_iter)
        stage = reference.stage.name
        assert fast.lq.is_contiguous(memory_format=torch.channels_last)
        assert fast.output.dtype == torch.float32
        for name, value in reference.log_dict.items():
            assert fast.log_dict[name] == pytest.approx(value, rel=LOSS_RTOL), (stage, name)
        assert (fast.output - reference.output).abs().max() < OUTPUT_ATOL, stage
    # Checkpoints keep plain names and load into a plain network.
    fast.save_network(fast.net_g, "net_g", "fast")
    state = torch.load(tmp_path / "net_g_fast.pth", weights_only=True)["params"]
    assert set(state) == set(reference.get_bare_model(reference.net_g).state_dict())


def test_compiled_erl_model_trains_every_stage_as_eager(tmp_path: Path) -> None:
    reference = erl_model(tmp_path)
    compiled = erl_model(tmp_path, compile={"backend": "eager"})
    assert compiled.net_g._compiled_call_impl is not None
    data = batch(16)
    for current_iter in range(1, reference.opt["train"]["total_iter"] + 1):
        for model in (reference, compiled):
            model.update_learning_rate(current_iter)
            model.feed_data(data)
            model.optimize_parameters(current_iter)
        for name, value in reference.log_dict.items():
            assert compiled.log_dict[name] == pytest.approx(value, rel=1e-4), (reference.stage.name, name)
    compiled.test()
    reference.test()
    torch.testing.assert_close(compiled.output, reference.output, rtol=1e-4, atol=1e-4)


def test_derain_paths_in_bf16_and_channels_last_on_the_cpu(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (80, 64), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    torch.manual_seed(0)
    net = MEMD(**{k: v for k, v in BACKBONE.items() if k != "type"}).eval()
    full = derain_paths(copy.deepcopy(net), [tmp_path / "a.png"], tmp_path / "fp32", tile=48, progress=False)
    fast = derain_paths(
        net, [tmp_path / "a.png"], tmp_path / "bf16", tile=48, precision="bf16", channels_last=True, progress=False
    )
    assert (full.precision, fast.precision) == ("fp32", "bf16")
    difference = np.abs(
        cv2.imread(str(tmp_path / "fp32/a.png")).astype(int) - cv2.imread(str(tmp_path / "bf16/a.png")).astype(int)
    )
    assert 0 < difference.max() <= 8 and difference.mean() < 1.0  # bf16 really ran, and stays close


def test_the_fp16_loss_scale_is_part_of_the_training_state(tmp_path: Path) -> None:
    opt = memd_options("DerainModel")
    opt["path"] = {"training_states": str(tmp_path), "models": str(tmp_path)}
    writer = DerainModel(opt)
    # A CUDA fp16 run's scaler, standing in on the CPU (fp16 autocast itself needs CUDA here).
    writer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    writer.grad_scaler.scale(torch.ones(()))  # the scale exists from the first scaled loss on
    writer.grad_scaler.update(2.0**7)
    writer.save_training_state(0, 3)
    state = torch.load(tmp_path / "3.state", weights_only=True)
    assert state["grad_scaler"]["scale"] == 2.0**7
    reader = DerainModel(memd_options("DerainModel"))
    reader.grad_scaler = torch.amp.GradScaler("cpu")
    reader.resume_training(state)
    assert reader.grad_scaler.get_scale() == 2.0**7
    assert "grad_scaler" not in DerainModel(memd_options("DerainModel")).training_state_extras()  # fp32: nothing


def test_derain_model_skips_a_non_finite_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DerainModel(memd_options("DerainModel", max_consecutive_nonfinite=2))
    data = batch()
    data["gt"][0, 0, 0, 0] = float("nan")
    model.feed_data(data)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.optimize_parameters(1)
    assert all(torch.equal(before[k], v) for k, v in model.net_g.state_dict().items())
    assert model.skips_saving(1)
    with pytest.raises(NonFiniteLossError, match="iteration 2: 2 consecutive non-finite losses"):
        model.optimize_parameters(2)
