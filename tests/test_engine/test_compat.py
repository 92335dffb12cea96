"""Each compat patch fixes a real failure of basicsr 1.4.2 here, and that failure comes back without it.

Every scenario runs in a fresh interpreter, once as is and once with the patch switched off through
``ERL_PLUGIN_COMPAT_DISABLE``. The patches for BasicSR's own scripts run as such a script: a file
``basicsr/train.py`` in the test's folder, which the start-up hook recognises.
"""

import shutil
import sysconfig
from pathlib import Path

import pytest
from conftest import free_port, run_python, tiny_options, write_options

from erl_plugin.engine import compat

DISABLE = compat.DISABLE_ENV


def test_patch_names_are_documented() -> None:
    for name in compat.PATCH_NAMES:
        assert name in compat.__doc__


def test_an_unknown_patch_name_is_named_and_ignored(tmp_path: Path) -> None:
    """An import cannot end with a clean error: the name is warned about and every patch still applies."""
    result = run_python(["-c", "import erl_plugin; print('imported')"], tmp_path, {DISABLE: "no_such_patch"})
    assert result.returncode == 0 and result.stdout.strip() == "imported", result.stderr
    assert "unknown patch ['no_such_patch'] ignored; allowed: functional_tensor" in result.stderr


def test_functional_tensor(tmp_path: Path) -> None:
    code = "import erl_plugin, basicsr.data.degradations; print('ok')"
    assert run_python(["-c", code], tmp_path).stdout.strip() == "ok"
    broken = run_python(["-c", code], tmp_path, {DISABLE: "functional_tensor", "ERL_PLUGIN_NO_HOOK": "1"})
    assert "No module named 'torchvision.transforms.functional_tensor'" in broken.stderr


DIST_CODE = """
import basicsr, torch, torch.distributed as dist
from basicsr.models.base_model import BaseModel
from basicsr.utils.dist_util import init_dist
init_dist("pytorch")
print("backend", dist.get_backend())
model = BaseModel({"num_gpu": 0, "is_train": False, "dist": True})
print("wrapped", type(model.model_to_device(torch.nn.Linear(2, 2))).__name__)
dist.destroy_process_group()
"""


def _as_basicsr_script(folder: Path, code: str) -> list[str]:
    """A ``basicsr/train.py`` holding ``code`` in ``folder``: the hook treats it as BasicSR's script."""
    (folder / "basicsr").mkdir(exist_ok=True)
    (folder / "basicsr" / "train.py").write_text(code)
    return ["basicsr/train.py"]


def _dist_env(disable: str = "") -> dict[str, str]:
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(free_port())
    if disable:
        env[DISABLE] = disable
    return env


def test_dist_init_and_ddp_on_cpu(tmp_path: Path) -> None:
    result = run_python(_as_basicsr_script(tmp_path, DIST_CODE), tmp_path, _dist_env())
    assert result.returncode == 0, result.stderr
    assert "backend gloo" in result.stdout
    assert "wrapped DistributedDataParallel" in result.stdout


def test_dist_init_fails_without_patch(tmp_path: Path) -> None:
    result = run_python(_as_basicsr_script(tmp_path, DIST_CODE), tmp_path, _dist_env("dist_init_cpu"))
    assert result.returncode != 0
    assert "ZeroDivisionError" in result.stderr


def test_ddp_fails_without_patch(tmp_path: Path) -> None:
    result = run_python(_as_basicsr_script(tmp_path, DIST_CODE), tmp_path, _dist_env("ddp_cpu"))
    assert "backend gloo" in result.stdout
    assert result.returncode != 0
    assert "wrapped" not in result.stdout


UPSTREAM_OBJECTS = (
    "import erl_plugin\n"
    "from basicsr.models.base_model import BaseModel\n"
    "from basicsr.models.sr_model import SRModel\n"
    "from basicsr.utils import dist_util, options\n"
    "from erl_plugin.engine import compat\n"
    "print(compat.applied)\n"
    "print(BaseModel.save_network.__module__, BaseModel.model_to_device.__module__, SRModel.validation.__module__,"
    " SRModel.dist_validation.__module__, dist_util._init_dist_pytorch.__module__, options.parse_options.__module__)\n"
)


def test_importing_the_plugin_leaves_basicsr_s_classes_as_upstream(tmp_path: Path) -> None:
    """A program of one's own that imports erl_plugin gets the two import fixes only; the plugin's features are
    methods of its own models and pipeline."""
    result = run_python(["-c", UPSTREAM_OBJECTS], tmp_path)
    assert result.returncode == 0, result.stderr
    applied, modules = result.stdout.strip().splitlines()
    assert set(eval(applied)) <= {"functional_tensor", "lmdb_shared_env"}  # noqa: S307 (a printed list)
    assert modules.split() == [
        "basicsr.models.base_model",
        "basicsr.models.base_model",
        "basicsr.models.base_model",
        "basicsr.models.sr_model",
        "basicsr.utils.dist_util",
        "basicsr.utils.options",
    ]


@pytest.mark.slow
def test_resume_on_cpu(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    """BasicSR's train.py loads a training state onto the current CUDA device; without CUDA it resumes only
    through the plugin's loader."""
    (tmp_path / "basicsr").mkdir()
    shutil.copy(Path(sysconfig.get_paths()["purelib"]) / "basicsr" / "train.py", tmp_path / "basicsr" / "train.py")
    write_options(tmp_path, tiny_options(tiny_lmdb, total_iter=2))
    first = run_python(["basicsr/train.py", "-opt", "opt.yml"], tmp_path)
    assert first.returncode == 0, first.stderr
    write_options(tmp_path, tiny_options(tiny_lmdb, total_iter=4), "more.yml")
    broken = run_python(["basicsr/train.py", "-opt", "more.yml", "--auto_resume"], tmp_path, {DISABLE: "resume_on_cpu"})
    assert broken.returncode != 0
    assert "load_resume_state" in broken.stderr
    resumed = run_python(["basicsr/train.py", "-opt", "more.yml", "--auto_resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming training from epoch: 0, iter: 2." in resumed.stderr
    assert (tmp_path / "experiments/tiny/training_states/4.state").is_file()


@pytest.mark.slow
def test_lmdb_shared_between_training_and_validation(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb, total_iter=2)
    opt["datasets"]["val"].update(dataroot_lq=tiny_lmdb["train_lq"], dataroot_gt=tiny_lmdb["train_gt"])
    opt["val"]["val_freq"] = 1
    opt_file = write_options(tmp_path, opt)
    result = run_python(["-m", "erl_plugin.train", "-opt", str(opt_file)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Validation tiny_test") == 3
    broken = run_python(
        ["-m", "erl_plugin.train", "-opt", str(opt_file), "--set", "name=tiny_broken"],
        tmp_path,
        {DISABLE: "lmdb_shared_env"},
    )
    assert broken.returncode != 0
    assert "is already open in this process" in broken.stderr


PAYLOAD = 'name: !!python/object/apply:os.system ["touch PWNED"]\nmodel_type: SRModel\n'


@pytest.mark.slow
def test_basicsr_scripts_refuse_options_that_run_code(tmp_path: Path) -> None:
    """BasicSR's own parse_options reads YAML with PyYAML's unsafe loader; with the plugin its train.py and
    test.py refuse the file as erl-train does, before anything runs; without the patch the payload runs."""
    import sysconfig

    scripts = Path(sysconfig.get_paths()["purelib"]) / "basicsr"
    (tmp_path / "evil.yml").write_text(PAYLOAD)
    expected = "error: evil.yml (line 1): refused: could not determine a constructor for the tag"
    ours = run_python(["-m", "erl_plugin.train", "-opt", "evil.yml"], tmp_path)
    assert ours.returncode == 2 and expected in ours.stderr and "never tags that construct Python" in ours.stderr
    for script in ("train.py", "test.py"):
        refused = run_python([str(scripts / script), "-opt", "evil.yml"], tmp_path)
        assert refused.returncode == 2 and not (tmp_path / "PWNED").exists(), script
        assert refused.stderr.strip().splitlines()[-1] == ours.stderr.strip().splitlines()[-1]
    run_python([str(scripts / "train.py"), "-opt", "evil.yml"], tmp_path, {DISABLE: "safe_yaml"})
    assert (tmp_path / "PWNED").exists(), "without the patch BasicSR runs the tag's code"
