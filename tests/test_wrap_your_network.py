"""docs/wrap_your_network.md: its adapter's size and its second options form (tests/test_documentation.py runs
its files and commands as written)."""

from pathlib import Path

import yaml
from conftest import REPO, run_python
from doc_blocks import blocks

DOC = REPO / "docs" / "wrap_your_network.md"


def doc_files() -> dict[str, str]:
    """The code blocks the tutorial introduces with a **`file name`**, by name."""
    return {block.file_name: block.text for block in blocks(DOC) if block.file_name}


def doc_blocks(language: str) -> list[str]:
    return [block.text for block in blocks(DOC) if block.language == language]


def test_the_adapter_is_at_most_30_lines() -> None:
    files = doc_files()
    assert set(files) == {"my_unet.py", "my_unet_erl.py", "my_unet_erl.yml"}
    assert len(files["my_unet_erl.py"].strip().splitlines()) <= 30


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
