"""The start-up hook: BasicSR's own train.py trains plugin networks, for editable and regular installs.

The suite's interpreter is the project's ``.venv`` with ``pip install -e .`` (the Makefile's
install); the regular ``pip install .`` runs into a throwaway venv that borrows the project venv's
packages through a path file.
"""

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO, plateau_options, run_python, tiny_options, write_options

import erl_plugin_hook
from erl_plugin.engine.compat import DISABLE_ENV

STARTUP = "import sys; print('torch' in sys.modules, any(type(f).__name__ == 'BasicsrFinder' for f in sys.meta_path))"
BASICSR_TRAIN = Path(sysconfig.get_paths()["purelib"]) / "basicsr" / "train.py"


def test_editable_install_has_the_hook() -> None:
    assert (Path(sysconfig.get_paths()["purelib"]) / "erl_plugin_hook.pth").is_file()


def test_startup_installs_the_finder_without_importing_torch(tmp_path: Path) -> None:
    assert run_python(["-c", STARTUP], tmp_path, cold=True).stdout.split() == ["False", "True"]


def test_startup_cost_is_under_10_ms(tmp_path: Path) -> None:
    result = run_python(["-X", "importtime", "-c", "pass"], tmp_path)
    costs = [int(m.group(1)) for m in re.finditer(r"\|\s+(\d+) \|\s+erl_plugin_hook$", result.stderr, re.M)]
    assert costs, result.stderr
    assert costs[0] < 10_000  # microseconds, cumulative


def test_environment_variable_disables_it(tmp_path: Path) -> None:
    env = {erl_plugin_hook.DISABLE_ENV: "1"}
    assert run_python(["-c", STARTUP], tmp_path, env, cold=True).stdout.split() == ["False", "False"]
    plain = run_python(["-c", "import basicsr"], tmp_path, env)
    assert "functional_tensor" in plain.stderr  # basicsr 1.4.2 alone does not import here


UPSTREAM = (
    "import basicsr, sys\n"
    "from basicsr.models.base_model import BaseModel\n"
    "from basicsr.utils import options\n"
    "from basicsr.utils.registry import ARCH_REGISTRY\n"
    "print('erl_plugin' in sys.modules, 'MEMD' in ARCH_REGISTRY, BaseModel.save_network.__module__,"
    " options.parse_options.__module__)\n"
)


def test_a_clone_s_folder_never_shadows_the_installed_package(tmp_path: Path) -> None:
    """From the parent of a clone named erl_plugin, that folder (no __init__.py at its top) would be imported
    as a namespace package before an editable install's finder is asked."""
    (tmp_path / "erl_plugin" / "erl_plugin").mkdir(parents=True)  # a clone's root, with its package inside
    code = "import erl_plugin; print(erl_plugin.__file__, hasattr(erl_plugin, 'Derainer'))"
    result = run_python(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(REPO / "erl_plugin" / "__init__.py"), "True"]


def test_any_other_program_gets_basicsr_as_upstream(tmp_path: Path) -> None:
    """A script that imports basicsr sees BasicSR's own objects: no plugin, no patch, nothing registered."""
    (tmp_path / "script.py").write_text(UPSTREAM)
    result = run_python(["script.py"], tmp_path)
    assert result.stdout.split() == ["False", "False", "basicsr.models.base_model", "basicsr.utils.options"], (
        result.stderr
    )


def test_basicsr_s_own_scripts_load_the_plugin_first(tmp_path: Path) -> None:
    """As a script named basicsr/train.py (a checkout's) or with -m basicsr.train, the plugin loads first and
    wraps the options reader (safe YAML); BasicSR's model classes stay upstream."""
    (tmp_path / "basicsr").mkdir()
    (tmp_path / "basicsr/train.py").write_text(UPSTREAM)
    as_script = run_python(["basicsr/train.py"], tmp_path)
    assert as_script.stdout.split() == ["True", "True", "basicsr.models.base_model", "erl_plugin.engine.compat"], (
        as_script.stderr
    )


def test_a_broken_plugin_never_breaks_basicsr(tmp_path: Path) -> None:
    fake = tmp_path / "shadow" / "erl_plugin"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('broken plugin')\n")
    (tmp_path / "basicsr").mkdir()
    (tmp_path / "basicsr/train.py").write_text("import basicsr; print('loaded', basicsr.__version__)\n")
    result = run_python(["basicsr/train.py"], tmp_path, {"PYTHONPATH": str(fake.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded 1.4.2"
    assert "erl_plugin_hook: erl_plugin not loaded (RuntimeError('broken plugin'))" in result.stderr


@pytest.mark.slow
def test_basicsr_scripts_in_a_checkout_train_resume_and_test_plugin_models(
    tmp_path: Path, tiny_lmdb: dict[str, str]
) -> None:
    checkout = tmp_path / "BasicSR"
    (checkout / "basicsr").mkdir(parents=True)
    for script in ("train.py", "test.py"):
        shutil.copy(BASICSR_TRAIN.parent / script, checkout / "basicsr" / script)
    (checkout / "options").mkdir()
    opt = tiny_options(tiny_lmdb, name="checkout")
    opt["model_type"] = "DerainModel"
    opt_file = write_options(checkout / "options", opt, "memd.yml")
    first = run_python(["basicsr/train.py", "-opt", str(opt_file)], checkout)
    assert first.returncode == 0, first.stderr
    assert (checkout / "experiments/checkout/models/net_g_latest.pth").is_file()
    resumed = run_python(["basicsr/train.py", "-opt", str(opt_file), "--auto_resume"], checkout)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming training from epoch: 0, iter: 2." in resumed.stderr
    opt.pop("train")
    opt["datasets"] = {"test_1": {**opt["datasets"]["val"]}}
    opt["path"]["pretrain_network_g"] = str(checkout / "experiments/checkout/models/net_g_latest.pth")
    test_file = write_options(checkout / "options", opt, "test.yml")
    tested = run_python(["basicsr/test.py", "-opt", str(test_file)], checkout)
    assert tested.returncode == 0, tested.stderr
    assert "Model [DerainModel] is created." in tested.stderr and "# psnr: " in tested.stderr


@pytest.mark.slow
def test_one_variable_shortens_erl_train_and_basicsr_s_script_alike(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    checkout = tmp_path / "BasicSR"
    (checkout / "basicsr").mkdir(parents=True)
    shutil.copy(BASICSR_TRAIN, checkout / "basicsr" / "train.py")
    commands = {
        "erl-train": ["-m", "erl_plugin.train"],
        "basicsr/train.py": ["basicsr/train.py"],
    }
    for form, command in commands.items():
        name = form.replace("/", "_").replace(".", "_").replace("-", "_")
        opt_file = write_options(checkout, tiny_options(tiny_lmdb, name=name, total_iter=8), f"{name}.yml")
        bad = run_python([*command, "-opt", str(opt_file)], checkout, {"ERL_PLUGIN_ITERS_SCALE": "ten"})
        assert bad.returncode == 2 and "ERL_PLUGIN_ITERS_SCALE='ten': expected a number > 0" in bad.stderr, form
        assert not (checkout / "experiments" / name).exists()
        result = run_python([*command, "-opt", str(opt_file)], checkout, {"ERL_PLUGIN_ITERS_SCALE": "0.25"})
        assert result.returncode == 0, result.stderr
        assert "iterations scaled by 0.25 (ERL_PLUGIN_ITERS_SCALE=0.25)" in result.stderr, form
        assert "iter:       2," in result.stderr and "iter:       3," not in result.stderr, form
        assert (checkout / "experiments" / name / "models" / "net_g_2.pth").is_file(), form


@pytest.mark.slow
def test_regular_install_and_site_packages_train_py(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md", "erl_plugin_hook.py", "erl_plugin_hook.pth"):
        shutil.copy(REPO / name, source / name)
    for package in ("erl_plugin", "erl_dev"):  # the checkout's packages; the wheel takes erl_plugin only
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # The project's packages without its .pth files (those are read only in site directories).
    (site / "project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.copytree(BASICSR_TRAIN.parent, site / "basicsr", ignore=shutil.ignore_patterns("__pycache__"))
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    assert (site / "erl_plugin_hook.pth").is_file() and (site / "erl_plugin" / "__init__.py").is_file()
    assert not (site / "erl_dev").exists()  # the development tools are not shipped
    # Every console script of setup.py is a command of the regular install, calling its module's main.
    declared = re.findall(r'"(erl-[a-z-]+) = (erl_plugin\.[a-z_.]+):main"', (REPO / "setup.py").read_text())
    assert len(declared) >= 10, declared
    for name, module in declared:
        assert f"from {module} import main" in (venv / "bin" / name).read_text(), name
    helped = subprocess.run([venv / "bin" / "erl-export", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: erl-export"), helped.stderr[-500:]

    startup = subprocess.run([python, "-c", STARTUP], capture_output=True, text=True, cwd=tmp_path)
    assert startup.stdout.split() == ["False", "True"], startup.stderr
    opt_file = write_options(tmp_path, tiny_options(tiny_lmdb, name="site_packages"))
    trained = subprocess.run(
        [python, str(site / "basicsr" / "train.py"), "-opt", str(opt_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    # Experiments go under the current directory, as with erl-train, never into site-packages.
    assert (tmp_path / "experiments/site_packages/models/net_g_latest.pth").is_file()
    assert not (site / "experiments").exists()
    where = subprocess.run(
        [python, "-c", "import erl_plugin; print(erl_plugin.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(site))


@pytest.mark.slow
def test_basicsr_train_py_ends_at_a_plateau_stop_as_erl_train_does(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    checkout = tmp_path / "BasicSR"
    (checkout / "basicsr").mkdir(parents=True)
    shutil.copy(BASICSR_TRAIN, checkout / "basicsr" / "train.py")
    opt_file = write_options(checkout, plateau_options(tiny_lmdb, "plateau", 4))
    result = run_python(["basicsr/train.py", "-opt", str(opt_file)], checkout)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "train.py: training ended: plateau reached at iteration 8" in result.stderr
    assert (checkout / "experiments/plateau/models/net_g_latest.pth").is_file()
    # Without the patch, BasicSR's script ends in the exception's traceback, exit 1.
    opt_file = write_options(checkout, plateau_options(tiny_lmdb, "unpatched", 4))
    unpatched = run_python(["basicsr/train.py", "-opt", str(opt_file)], checkout, {DISABLE_ENV: "plateau_stop"})
    assert unpatched.returncode == 1 and "PlateauReached: plateau reached at iteration 8" in unpatched.stderr
