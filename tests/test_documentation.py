"""Every shell block of README.md and docs/*.md runs, in order, as written, on stand-in data.

Each document runs in a fresh copy of the checkout (its tracked and untracked, not ignored files), block
after block, in ``bash -euo pipefail``. The one change to the commands is the documented way to shorten
any run: ``ERL_PLUGIN_ITERS_SCALE`` (docs/training.md, "Shorter runs"), at a scale that leaves one iteration per
stage. What a user brings is stood in for, small: the real datasets in their published layouts
(``datasets/RainTrainH``, ``datasets/Rain100H``), a folder of photos (``my_photos/``) and a BasicSR
checkout (``basicsr/train.py`` and ``test.py``, copied from the installed package). A document's file
blocks (introduced by **`name`**) are written as the reader would save them, and ``/path/to/erl_plugin``
stands for the checkout.

A block the suite cannot run says why on the line above its fence::

    <!-- not run by the suite: needs a CUDA device -->

``python`` and the installed commands (``erl-train``, ``erl-derain``, ...) in the blocks are forks of a warm interpreter
(tests/warm_python.py), which saves seconds per command; what they spawn are fresh interpreters.
With ``ERL_PLUGIN_TESTS_COLD=1`` they are the real ones.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import COLD_ENV, REPO, warm_python_socket, write_rain_pair
from doc_blocks import SHELL, blocks
from warm_python import write_shim

from erl_plugin.engine.options import ITERS_SCALE_ENV

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CHECKOUT_PLACEHOLDER = "/path/to/erl_plugin"
ITERS_SCALE = "1e-6"  # one iteration per stage, even for the paper's 720000-iteration stage I
BASICSR = Path(sysconfig.get_paths()["purelib"]) / "basicsr"


def test_every_block_names_its_language_and_every_skip_its_reason() -> None:
    problems = []
    for document in DOCUMENTS:
        for block in blocks(document):
            if not block.language:
                problems.append(f"{block.where}: a fence without a language (bash, sh, python, yaml, text...)")
            if block.skip_reason is not None and (block.language not in SHELL or len(block.skip_reason) < 15):
                problems.append(f"{block.where}: a skip marker belongs above a shell block and says why")
    assert not problems, "\n".join(problems)
    assert any(block.skip_reason is None for block in blocks(REPO / "README.md") if block.language in SHELL)


def _documents_with_commands() -> list[Path]:
    return [d for d in DOCUMENTS if any(b.language in SHELL and b.skip_reason is None for b in blocks(d))]


def _copy_checkout(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _stand_ins(root: Path) -> None:
    """What a user brings: the published datasets, photos, a BasicSR checkout (small)."""
    rng = np.random.default_rng(0)
    for index in range(1, 5):  # RainTrainH: norain-N.png and rain-N.png side by side
        train = root / "datasets" / "RainTrainH"
        write_rain_pair(train / f"rain-{index}.png", train / f"norain-{index}.png", rng, (72, 96))
    for index in range(1, 3):  # Rain100H: norain-NNN.png, rainy/rain-NNN.png
        test = root / "datasets" / "Rain100H"
        write_rain_pair(test / "rainy" / f"rain-{index:03d}.png", test / f"norain-{index:03d}.png", rng, (48, 64))
    for name, size in (("street", (37, 45)), ("garden", (150, 200)), ("roof", (160, 140)), ("yard", (132, 170))):
        write_rain_pair(root / "my_photos" / f"{name}.png", root / "clean_photos" / f"{name}.png", rng, size)
    shutil.rmtree(root / "clean_photos")
    (root / "basicsr").mkdir()
    for script in ("train.py", "test.py"):
        shutil.copy(BASICSR / script, root / "basicsr" / script)


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The blocks' environment: ``python``, ``erl-train`` and ``erl-test`` run warm (unless the suite runs
    cold), iterations scaled."""
    shims, warm = tmp_path_factory.mktemp("bin"), os.environ.get(COLD_ENV) != "1"
    commands = {"python": []}
    declared = re.findall(r'"(erl-[a-z-]+) = erl_plugin', (REPO / "setup.py").read_text())
    for console_script in declared:
        installed = shutil.which(console_script, path=str(Path(sys.executable).parent))
        assert installed, f"{console_script} is not installed beside {sys.executable}"
        commands[console_script] = [installed]
    for name, prefix in commands.items() if warm else ():
        write_shim(str(shims / name), name, warm_python_socket(), prefix)
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(shims), str(Path(sys.executable).parent), os.environ["PATH"]]),
        ITERS_SCALE_ENV: ITERS_SCALE,
    }


def _derained_photos_promises(root: Path) -> None:
    for photo in (root / "my_photos").iterdir():  # derained at the photo's own size, beside a comparison
        derained = cv2.imread(str(root / "derained" / photo.name))
        assert derained.shape == cv2.imread(str(photo)).shape
        assert (root / "derained" / f"{photo.stem}_compare.png").is_file()


def _evaluation_promises(root: Path) -> None:
    assert "| ERL-Net | ERLNet" in (root / "results/leaderboard/leaderboard.md").read_text()
    assert {"summary.md", "per_image.csv", "improvement.png"} <= {p.name for p in (root / "results/analysis").iterdir()}
    _derained_photos_promises(root)


def _wrap_your_network_promises(root: Path) -> None:
    """The plain network's checkpoint from stage I loads into MyUNet itself, as the tutorial says."""
    sys.path.insert(0, str(root))
    try:
        from my_unet import MyUNet  # noqa: PLC0415 (the tutorial's file, written by the test)

        weights = torch.load(root / "experiments/my_unet_erl/models/myunet_stage1.pth", weights_only=True)
        MyUNet(width=16).load_state_dict(weights["params"])
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("my_unet", None)
    assert cv2.imread(str(root / "derained/street.png")).shape == (37, 45, 3)


PROMISES = {
    "README.md": _derained_photos_promises,
    "evaluation.md": _evaluation_promises,
    "wrap_your_network.md": _wrap_your_network_promises,
}
"""What a document says its commands write, checked after they have run."""


@pytest.mark.slow
@pytest.mark.parametrize("document", _documents_with_commands(), ids=lambda d: d.name)
def test_documented_commands_run_in_order(document: Path, tmp_path: Path, shell_env: dict[str, str]) -> None:
    root = tmp_path / "checkout"
    root.mkdir()
    _copy_checkout(root)
    _stand_ins(root)
    for block in blocks(document):
        if block.file_name and block.language not in SHELL:
            (root / block.file_name).write_text(block.text, encoding="utf-8")
        if block.language not in SHELL or block.skip_reason is not None:
            continue
        script = block.text.replace(CHECKOUT_PLACEHOLDER, str(root))
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=root,
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (
            f"{block.where} exited {result.returncode}:\n{script}\n--- stdout\n{result.stdout[-3000:]}\n"
            f"--- stderr\n{result.stderr[-5000:]}"
        )
    PROMISES.get(document.name, lambda _: None)(root)
