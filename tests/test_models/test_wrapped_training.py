"""Networks we do not own train through the whole MA_D pipeline, by adapter and by module path."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_python, write_options
from test_erl_model import model_options
from test_erl_training import erl_options, stage_lines
from unet_zoo import WRAPPED, plain_network

from erl_plugin.archs import ERLNet
from erl_plugin.models import ERLModel

ZOO = {"PYTHONPATH": str(REPO / "tests")}  # custom_imports: [unet_zoo] finds the test networks there
CASES = {
    "unet_sn": "mlgd",  # adapter; grey images (one channel in, one out)
    "nafnet": "mlgd",  # adapter
    "restormer": "mlgd",  # adapter
    "nafnet_hooks": "mlgd",  # module paths, inject: encoder
    "restormer_hooks": "clgd",  # module path of the bottleneck
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_ma_d_trains_a_wrapped_network(tmp_path: Path, tiny_lmdb: dict[str, str], case: str) -> None:
    backbone, extra, channels = WRAPPED[case]
    opt = erl_options(tiny_lmdb, case, [1, 1, 1, 1])
    opt["custom_imports"] = ["unet_zoo"]
    opt["network_g"] = {"type": "ERLNet", "backbone": copy.deepcopy(backbone), "entangle": CASES[case], **extra}
    if channels == 1:
        for dataset in opt["datasets"].values():
            dataset["color"] = "y"
        # EMA: where other code would deepcopy the network, which spectral norm's tensors refuse.
        opt["train"]["ema_decay"] = 0.9
    opt["val"]["val_freq"] = 4
    result = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path, env=ZOO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(stage_lines(result.stderr)) == 4 and "# psnr: " in result.stderr
    models = tmp_path / "experiments" / case / "models"
    net = ERLNet(**{k: v for k, v in opt["network_g"].items() if k != "type"})
    net.load_state_dict(torch.load(models / "net_g_latest.pth", weights_only=True)["params"])
    # The end of stage I is the plain network's own checkpoint.
    plain_file = models / f"{backbone['type'].lower()}_stage1.pth"
    plain_network(backbone).load_state_dict(torch.load(plain_file, weights_only=True)["params"])
    stage1 = torch.load(models / "net_g_stage1.pth", weights_only=True)["params"]
    final = net.state_dict()
    assert any(not torch.equal(stage1[k], final[k]) for k in final if k.startswith("residual_encoder."))


def test_an_unimportable_custom_module_is_named(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = erl_options(tiny_lmdb, "bad", [1, 1, 1, 1])
    opt["custom_imports"] = ["no_such_zoo"]
    result = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path, env=ZOO)
    assert result.returncode == 2
    assert "custom_imports: 'no_such_zoo' cannot be imported" in result.stderr
    assert not (tmp_path / "experiments").exists()


def test_aligned_teacher_is_refused_with_module_paths(tmp_path: Path) -> None:
    opt = model_options(tmp_path, "MA_D", teacher_mode="aligned")
    opt["network_g"] = {"type": "ERLNet", "backbone": {"type": "TinyNAFNet"}, **WRAPPED["nafnet_hooks"][1]}
    with pytest.raises(
        ValueError, match=r"teacher_mode: aligned .* network_g.entangle_at .* teacher_mode: independent"
    ):
        ERLModel(opt)
