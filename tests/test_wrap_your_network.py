"""docs/wrap_your_network.md runs as written: its files, its options and its command."""

import re
import sys
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from conftest import REPO, run_python

DOC = REPO / "docs" / "wrap_your_network.md"


def doc_files() -> dict[str, str]:
    """The code blocks the tutorial introduces with a **`file name`**: the first block after each."""
    text = DOC.read_text()
    fence = re.compile(r"```\w+\n(.*?)```", re.S)
    return {m.group(1): fence.search(text, m.end()).group(1) for m in re.finditer(r"\*\*`([\w.]+)`\*\*", text)}


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_the_adapter_is_at_most_30_lines() -> None:
    files = doc_files()
    assert set(files) == {"my_unet.py", "my_unet_erl.py", "my_unet_erl.yml"}
    assert len(files["my_unet_erl.py"].strip().splitlines()) <= 30


@pytest.mark.slow
def test_the_tutorial_trains_as_written(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    for name, text in doc_files().items():
        (tmp_path / name).write_text(text)
    commands = doc_blocks("sh")[0].splitlines()
    assert commands[1] == "erl-train -opt my_unet_erl.yml"
    # The tutorial's data come from tools/synthesize_rain.py; the tiny LMDBs stand in for them here.
    overrides = [
        f"datasets.{phase}.dataroot_{kind}={tiny_lmdb[f'{split}_{kind}']}"
        for phase, split in (("train", "train"), ("val", "test"))
        for kind in ("gt", "lq")
    ]
    overrides += ["datasets.train.gt_size=32", "train.stage_iters=[1,1,1,1]", "train.total_iter=4"]
    overrides += ["val.val_freq=4", "logger.save_checkpoint_freq=4", "datasets.train.batch_size_per_gpu=2"]
    args = ["-m", "erl_plugin.train", *commands[1].split()[1:]]
    result = run_python([*args, *(f"--set={override}" for override in overrides)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Stage 4/4 'stage3'" in result.stderr and "# psnr_basicsr: " in result.stderr
    models = tmp_path / "experiments" / "my_unet_erl" / "models"
    # The plain network's checkpoint from stage I loads into MyUNet itself.
    sys.path.insert(0, str(tmp_path))
    try:
        from my_unet import MyUNet

        MyUNet(width=16).load_state_dict(torch.load(models / "myunet_stage1.pth", weights_only=True)["params"])
    finally:
        sys.path.remove(str(tmp_path))
    # The derain tool reads custom_imports too.
    (tmp_path / "my_photos").mkdir()
    image = (torch.rand(37, 45, 3) * 255).to(torch.uint8).numpy()
    cv2.imwrite(str(tmp_path / "my_photos" / "street.png"), image)
    derain = " ".join(commands[2:]).replace("\\", "").replace("/path/to/erl_plugin", str(REPO)).split()
    result = run_python(derain[1:], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert cv2.imread(str(tmp_path / "derained" / "street.png")).shape == (37, 45, 3)


def test_the_module_path_options_build_and_mlgd_into_the_decoder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "my_unet.py").write_text(doc_files()["my_unet.py"])
    network = yaml.safe_load(doc_blocks("yaml")[1])["network_g"]
    script = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
import my_unet
import torch
from erl_plugin.archs import ERLNet
options = {network!r}
del options["type"]
net = ERLNet(**options)
assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
print(net.backbone.decoder_modules)
try:
    ERLNet(**{{**options, "inject": "decoder"}})
except ValueError as error:
    print(error)
"""
    result = run_python(["-c", script], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "('up2', 'up1', 'head')" in result.stdout
    assert "'enc1' also reaches 'enc2', 'middle'" in result.stdout
