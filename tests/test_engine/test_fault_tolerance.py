"""Fault tolerance: SIGKILL and resume, atomic and checked checkpoints, bad resume input, NaN steps, DDP.

Training runs in subprocesses, as users run it. Faults are real: a small launcher
(``FAULTY_TRAIN``) patches one function of the plugin and then trains through ``erl-train``'s
``main``; when the chosen point is reached the process sends itself SIGKILL. Every comparison with
an uninterrupted run is bitwise (CPU, one thread, deterministic kernels).
"""

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import free_port, run_python, tiny_options, write_options

from erl_plugin.archs import MEMD, ERLNet
from erl_plugin.engine.options import OptionsError, validate_options
from erl_plugin.utils.checkpoint import CheckpointError, atomic_save, prune_checkpoints, safe_load

BASICSR_TRAIN = Path(sysconfig.get_paths()["purelib"]) / "basicsr" / "train.py"
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

FAULTY_TRAIN = r'''
"""faulty_train.py KIND AT [SCRIPT] -- ARGS: train, and SIGKILL this process at one point."""
import os, runpy, signal, sys

import erl_plugin  # the plugin's classes, before anything below is wrapped

kind, at = sys.argv[1], sys.argv[2]
rest = sys.argv[sys.argv.index("--") + 1:]
dies_here = os.environ.get("RANK", "0") == "0"


def die():
    if dies_here:
        os.kill(os.getpid(), signal.SIGKILL)


if kind in ("step", "nan"):
    from basicsr.models.sr_model import SRModel
    from erl_plugin.models.derain_model import DerainModel
    from erl_plugin.models.erl_model import ERLModel

    for cls in (ERLModel, DerainModel, SRModel):
        def wrap(original):
            def optimize_parameters(self, current_iter):
                if kind == "step" and current_iter == int(at):
                    die()  # inside the step: nothing of it is saved
                if kind == "nan" and current_iter in {int(i) for i in at.split(",")}:
                    self.lq, self.gt = self.lq * float("nan"), self.gt * float("nan")
                original(self, current_iter)
            return optimize_parameters
        cls.optimize_parameters = wrap(cls.__dict__["optimize_parameters"])
else:  # before_rename / after_rename: while the checkpoint file named AT is being written
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == at and kind == "before_rename":
            die()  # the temporary file is complete and fsynced; the final name does not exist yet
        real_replace(src, dst)
        if os.path.basename(dst) == at:
            die()

    os.replace = replace

if sys.argv[3] != "--":  # a BasicSR script, as `python basicsr/train.py` runs it (the hook's fixes included)
    from erl_plugin.engine import compat
    compat.apply_to_basicsr_scripts()
    sys.argv = [sys.argv[3], *rest]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    from erl_plugin.train import main
    sys.exit(main(rest))
'''


def erl_options(data: dict[str, str], name: str, stage_iters: list[int], **logger: Any) -> dict:
    """Tiny MA_D options with short epochs (3 batches), flips, validation mid-run and every save."""
    opt = tiny_options(data, name=name, total_iter=sum(stage_iters))
    opt["model_type"] = "ERLModel"
    opt["network_g"] = {"type": "ERLNet", "backbone": opt["network_g"], "entangle": "mlgd"}
    opt["path"]["pretrain_network_t"] = None
    opt["datasets"]["train"]["dataset_enlarge_ratio"] = 1
    opt["train"].update(
        strategy="MA_D",
        stage_iters=stage_iters,
        scheduler={"type": "MultiStepLR", "milestones": [1], "gamma": 0.5},
        feature_opt={"type": "FeatureReconstructionLoss", "loss_weight": 0.01},
    )
    opt["logger"].update(save_checkpoint_freq=1, **logger)
    opt["val"]["val_freq"] = 4
    return opt


def train(tmp_path: Path, opt_file: Path, *args: str, fault: tuple[str, str] | None = None, script: str = "--"):
    """Run erl-train (or ``script``) on ``opt_file``, under the fault launcher when ``fault`` is given."""
    if fault is None:
        if script != "--":
            return run_python([script, "-opt", str(opt_file), *args], tmp_path, ENV)
        return run_python(["-m", "erl_plugin.train", "-opt", str(opt_file), *args], tmp_path, ENV)
    launcher = tmp_path / "faulty_train.py"
    launcher.write_text(FAULTY_TRAIN)
    extra = [] if script == "--" else [script]
    return run_python([str(launcher), *fault, *extra, "--", "-opt", str(opt_file), *args], tmp_path, ENV)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["params"]


def assert_bitwise_equal(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{a} and {b} differ in {different[:5]}"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


STAGES = [2, 3, 2, 2]  # teacher 1-2, stage1 3-5, stage2 6-7, stage3 8-9; epochs of 3 iterations


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_lmdb: dict[str, str]) -> Path:
    """An uninterrupted run (keep_last 3); returns its experiment folder."""
    root = tmp_path_factory.mktemp("reference")
    opt_file = write_options(root, erl_options(tiny_lmdb, "ref", STAGES, keep_last=3))
    result = train(root, opt_file)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "experiments/ref"


@pytest.mark.slow
def test_keep_last_prunes_old_checkpoints_and_keeps_stage_files(reference: Path) -> None:
    assert sorted(p.name for p in (reference / "training_states").iterdir()) == ["7.state", "8.state", "9.state"]
    models = {p.name for p in (reference / "models").iterdir()}
    assert {f"net_{x}_{i}.pth" for x in "gt" for i in (7, 8, 9)} <= models
    assert not {f"net_g_{i}.pth" for i in range(1, 7)} & models
    assert {
        "net_g_stage1.pth",
        "memd_stage1.pth",
        "net_g_stage2.pth",
        "net_t_teacher.pth",
        "net_g_latest.pth",
    } <= models
    assert not list(reference.rglob("*.tmp"))


KILLS = {
    "mid_stage": ("step", str(random.Random().randint(2, 9))),  # any iteration; the run then repeats it
    "stage_boundary": ("after_rename", "5.state"),  # stage1's last state written, stage2 not yet entered
    "state_write": ("before_rename", "6.state"),  # networks of 6 written, its state not yet renamed
    "network_write": ("before_rename", "net_g_7.pth"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILLS))
def test_sigkill_then_auto_resume_ends_bitwise_equal(
    tmp_path: Path, tiny_lmdb: dict[str, str], reference: Path, case: str
) -> None:
    kind, at = KILLS[case]
    workers = 2 if case == "mid_stage" else 0  # the data do not depend on the loader's worker count
    opt = erl_options(tiny_lmdb, "killed", STAGES, keep_last=3)
    opt["datasets"]["train"]["num_worker_per_gpu"] = workers
    opt_file = write_options(tmp_path, opt)
    killed = train(tmp_path, opt_file, fault=(kind, at))
    assert killed.returncode == -9, f"{case} at {at}: {killed.stderr[-2000:]}"
    states = tmp_path / "experiments/killed/training_states"
    if kind == "before_rename":
        assert list((tmp_path / "experiments/killed").rglob(f".{at}.*.tmp")), "the temporary file is left"
        assert not list((tmp_path / "experiments/killed").rglob(at)), "the final name never appears half-written"
    resumed = train(tmp_path, opt_file, "--auto_resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = int(at) - 1 if case == "mid_stage" else {"stage_boundary": 5, "state_write": 5, "network_write": 6}[case]
    if last:
        assert f"Resuming training from epoch: {(last - 1) // 3}, iter: {last}." in resumed.stderr, (case, at)
        assert "continues after its batch" in resumed.stderr
    for name in ("net_g_latest.pth", "net_t_latest.pth", "memd_stage1.pth", "net_g_stage2.pth"):
        assert_bitwise_equal(reference / "models" / name, tmp_path / "experiments/killed/models" / name)
    assert sorted(p.name for p in states.iterdir() if p.suffix == ".state") == ["7.state", "8.state", "9.state"]


@pytest.mark.slow
def test_rain_rendered_on_the_fly_resumes_bitwise_after_a_kill(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    """SyntheticRainDataset draws each sample from its seed: a killed run resumed with loader workers
    (the reference has none) trains on the same pairs, mid-epoch, and ends bitwise equal."""
    opt = tiny_options(tiny_lmdb, name="fly", total_iter=8)
    opt["datasets"]["train"] = {
        "name": "rain_on_the_fly",
        "type": "SyntheticRainDataset",
        "preset": "wide",
        "gt_size": 24,
        "rescale": [0.5, 1.0],
        "num_samples": 6,  # 3 batches per epoch: the kill at iteration 5 is mid-epoch
        "num_worker_per_gpu": 0,
        "batch_size_per_gpu": 2,
    }
    opt["logger"]["save_checkpoint_freq"] = 1
    reference = train(tmp_path, write_options(tmp_path, opt, "reference.yml"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    opt["name"] = "fly_killed"
    killed_file = write_options(tmp_path, opt, "killed.yml")
    killed = train(tmp_path, killed_file, fault=("step", "5"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    opt["datasets"]["train"]["num_worker_per_gpu"] = 2
    resumed = train(tmp_path, write_options(tmp_path, opt, "killed.yml"), "--auto_resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continues after its batch 1" in resumed.stderr
    assert_bitwise_equal(
        tmp_path / "experiments/fly/models/net_g_latest.pth",
        tmp_path / "experiments/fly_killed/models/net_g_latest.pth",
    )


@pytest.mark.slow
def test_corrupt_latest_checkpoints_fall_back_with_a_warning(
    tmp_path: Path, tiny_lmdb: dict[str, str], reference: Path
) -> None:
    opt_file = write_options(tmp_path, erl_options(tiny_lmdb, "broken", STAGES, keep_last=4))
    killed = train(tmp_path, opt_file, fault=("after_rename", "7.state"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    experiment = tmp_path / "experiments/broken"
    state_7 = experiment / "training_states/7.state"
    state_7.write_bytes(state_7.read_bytes()[: state_7.stat().st_size // 2])  # a partial write
    net_6 = experiment / "models/net_g_6.pth"
    other = MEMD(num_feat=4, num_dense_layers=1, growth_rate=4).state_dict()
    torch.save({"params": other}, net_6)  # overwritten behind the state's back
    resumed = train(tmp_path, opt_file, "--auto_resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"WARNING: training state {state_7}: truncated or corrupt" in resumed.stderr
    assert f"{net_6} does not match the checksum recorded with it" in resumed.stderr
    assert "Resuming training from epoch: 1, iter: 5." in resumed.stderr
    assert_bitwise_equal(reference / "models/net_g_latest.pth", experiment / "models/net_g_latest.pth")


def _drop_keys(path: Path, *keys: str) -> None:
    state = torch.load(path, weights_only=True)
    for key in keys:
        del state[key]
    torch.save(state, path)


BAD_RESUMES = {
    "other_strategy": (["--set", "train.strategy=MA_C"], "written for the stages", "train.strategy 'MA_C'"),
    "other_backbone": (
        ["--set", "network_g.backbone.num_feat=8"],
        "written by options with network_g.backbone.num_feat: 4, but these give network_g.backbone.num_feat: 8",
        "the change would not apply",
    ),
    "other_learning_rate": (
        ["--set", "train.optim_g.lr=1e-5"],
        "written by options with train.optim_g.lr: 0.001, but these give train.optim_g.lr: 1e-05",
        "start a new run from its latest weights",
    ),
    "no_stage": ([], "the training state records no stage", "ERLModel"),
    "other_architecture": ([], "net_g_9.pth does not fit network_g (ERLNet)", "tensor(s) of other shapes"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_RESUMES))
def test_bad_resume_input_is_refused_and_changes_no_file(
    tmp_path: Path, tiny_lmdb: dict[str, str], reference: Path, case: str
) -> None:
    args, *needles = BAD_RESUMES[case]
    experiment = tmp_path / "experiments/ref"
    shutil.copytree(reference, experiment)
    if case == "no_stage":
        _drop_keys(experiment / "training_states/9.state", "stage", "stages")
    if case == "other_architecture":  # a state from before checksums, beside a network of another shape
        _drop_keys(experiment / "training_states/9.state", "options", "files")
        wide = ERLNet(backbone={"type": "MEMD", "num_feat": 8, "num_dense_layers": 1, "growth_rate": 4})
        torch.save({"params": wide.state_dict()}, experiment / "models/net_g_9.pth")
    opt_file = tmp_path / "opt.yml"
    opt_file.write_text((reference.parent.parent / "opt.yml").read_text())
    before = snapshot(tmp_path)
    result = train(tmp_path, opt_file, "--auto_resume", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")
    for needle in needles:
        assert needle in result.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_non_finite_steps_are_skipped_then_training_stops(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = erl_options(tiny_lmdb, "nan", STAGES)
    opt["train"]["max_consecutive_nonfinite"] = 2
    opt_file = write_options(tmp_path, opt)
    result = train(tmp_path, opt_file, fault=("nan", "4,6,7,8,9"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "stage 'stage1', iteration 4: non-finite loss (l_pix=nan" in result.stderr
    assert "step skipped (1 in a row)" in result.stderr
    states = tmp_path / "experiments/nan/training_states"
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: stage 'stage2', iteration 7: 2 consecutive non-finite losses")
    assert error.endswith(f"the last good checkpoint: {states / '5.state'}")
    assert sorted(p.name for p in states.iterdir()) == ["1.state", "2.state", "3.state", "5.state"]
    assert torch.isfinite(
        torch.cat([v.flatten() for v in weights(states.parent / "models/net_g_5.pth").values()])
    ).all()


def torchrun(tmp_path: Path, opt_file: Path, *args: str, nodes: int = 1, fault: tuple[str, str] | None = None):
    """Two processes: one node with two, or two nodes (agents) with one each on this machine."""
    target = ["-m", "erl_plugin.train"]
    if fault is not None:
        (tmp_path / "faulty_train.py").write_text(FAULTY_TRAIN)
        target = [str(tmp_path / "faulty_train.py"), *fault, "--"]
    tail = [*target, "-opt", str(opt_file), "--launcher", "pytorch", *args]
    if nodes == 1:
        return run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *tail], tmp_path, ENV)
    port = str(free_port())
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                *tail,
            ],
            cwd=tmp_path,
            env={**os.environ, **ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(nodes)
    ]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    return subprocess.CompletedProcess(
        agents[0].args, max(a.returncode for a in agents), outputs[0][0], "".join(o[1] for o in outputs)
    )


@pytest.mark.slow
def test_ddp_across_stages_killed_and_resumed_equals_a_two_node_run(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    stage_iters = [1, 2, 2, 1]  # teacher 1, stage1 2-3, stage2 4-5, stage3 6; one batch per rank per epoch
    opt = erl_options(tiny_lmdb, "two_nodes", stage_iters)
    opt["val"]["val_freq"] = 2  # sharded validation at 2, 4, 6
    reference = tmp_path / "ref"
    reference.mkdir()
    two_nodes = torchrun(reference, write_options(reference, opt), nodes=2)
    assert two_nodes.returncode == 0, two_nodes.stderr[-3000:]
    assert "World size (gpu number): 2" in two_nodes.stderr
    assert two_nodes.stderr.count("Validation tiny_test") == 4
    opt["name"] = "killed"
    opt_file = write_options(tmp_path, opt)
    killed = torchrun(tmp_path, opt_file, fault=("step", "4"))  # rank 0 dies in stage2's first step
    assert killed.returncode != 0 and not (tmp_path / "experiments/killed/training_states/4.state").exists()
    resumed = torchrun(tmp_path, opt_file, "--auto_resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming training from epoch: 2, iter: 3." in resumed.stderr
    assert re.findall(r"Stage \d/\d '(\w+)'", resumed.stderr)[:2] == ["stage1", "stage2"]
    for name in ("net_g_latest.pth", "net_t_latest.pth"):
        assert_bitwise_equal(
            reference / "experiments/two_nodes/models" / name, tmp_path / "experiments/killed/models" / name
        )


@pytest.mark.slow
def test_two_processes_with_batch_b_step_like_one_with_batch_2b(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = tiny_options(tiny_lmdb, name="ddp", total_iter=2)
    # BasicSR offers Adam only; with eps 1 its first steps are close to -lr * grad, so they show the gradient
    opt["train"]["optim_g"] = {"type": "Adam", "lr": 1.0, "eps": 1.0}
    opt["logger"]["save_checkpoint_freq"] = 1
    ddp = torchrun(tmp_path, write_options(tmp_path, opt))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    opt.update(name="single")
    opt["datasets"]["train"]["batch_size_per_gpu"] = 4
    single = train(tmp_path, write_options(tmp_path, opt, "single.yml"))
    assert single.returncode == 0, single.stderr[-3000:]
    models = tmp_path / "experiments"
    start = weights(models / "ddp/models/net_g_1.pth")
    for iteration in (1, 2):
        a, b = (
            weights(models / f"ddp/models/net_g_{iteration}.pth"),
            weights(models / f"single/models/net_g_{iteration}.pth"),
        )
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{key} after step {iteration}")
    end = weights(models / "ddp/models/net_g_2.pth")
    assert max((end[k] - start[k]).abs().max().item() for k in start) > 1e-2  # steps are 1000x the tolerance
    ddp_psnr, single_psnr = ([float(m) for m in re.findall(r"# psnr: ([\d.]+)", r.stderr)] for r in (ddp, single))
    assert len(ddp_psnr) == len(single_psnr) == 2  # at iteration 2 and at the end
    torch.testing.assert_close(ddp_psnr, single_psnr, rtol=0, atol=1e-3)  # sharded validation: the same means


@pytest.mark.slow
def test_basicsr_train_py_resumes_a_plugin_model_after_a_kill(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    """BasicSR's own script keeps the plugin model's checked checkpoints and resumes after a kill; its loop
    restarts the interrupted epoch (upstream), so the bitwise repeat is erl-train's alone."""
    checkout = tmp_path / "BasicSR"
    (checkout / "basicsr").mkdir(parents=True)
    shutil.copy(BASICSR_TRAIN, checkout / "basicsr/train.py")
    opt = tiny_options(tiny_lmdb, name="memd", total_iter=7)
    opt["model_type"] = "DerainModel"
    opt["datasets"]["train"]["dataset_enlarge_ratio"] = 1
    opt["logger"]["save_checkpoint_freq"] = 1
    opt_file = write_options(checkout, opt)
    killed = train(checkout, opt_file, fault=("step", "5"), script="basicsr/train.py")
    assert killed.returncode == -9, killed.stderr[-3000:]
    state = safe_load(str(checkout / "experiments/memd/training_states/4.state"))
    assert state["files"].keys() == {"net_g_4.pth"} and state["data"] is None and state["options"]["model_type"]
    resumed = train(checkout, opt_file, "--auto_resume", script="basicsr/train.py")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming training from epoch: 1, iter: 4." in resumed.stderr
    assert (checkout / "experiments/memd/training_states/7.state").is_file()
    assert (checkout / "experiments/memd/models/net_g_latest.pth").is_file()
    refused = train(checkout, opt_file, "--force_yml", "train:total_iter=8", script="basicsr/train.py")
    assert refused.returncode != 0 and "--force_yml applies overrides with exec" in refused.stderr


# ------------------------------------------------------------------------------ fast unit tests
class Pickled:
    """Not a tensor: only arbitrary unpickling rebuilds it."""


def test_safe_load_refuses_code_and_names_broken_files(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"params": Pickled()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.pth: refused: it holds objects that only arbitrary unpickling"):
        safe_load(str(unsafe))
    good = tmp_path / "good.pth"
    atomic_save({"params": {"w": torch.ones(3)}}, str(good))
    assert torch.equal(safe_load(str(good))["params"]["w"], torch.ones(3))
    assert not list(tmp_path.glob("*.tmp"))
    good.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"good\.pth: truncated or corrupt"):
        safe_load(str(good))
    with pytest.raises(CheckpointError, match="no such file"):
        safe_load(str(tmp_path / "missing.pth"))


def test_prune_deletes_only_what_the_training_wrote(tmp_path: Path) -> None:
    """Old states and the networks they recorded go; a look-alike name, a replaced network, a file that
    is not a state and the stage files stay."""
    states, models = tmp_path / "states", tmp_path / "models"
    for it in (1, 2, 3, 10, 11):
        digest = atomic_save({"params": {"w": torch.full((2,), float(it))}}, str(models / f"net_g_{it}.pth"))
        atomic_save({"iter": it, "files": {f"net_g_{it}.pth": digest}}, str(states / f"{it}.state"))
    (models / "net_g_3.pth").write_bytes(b"the user's own file, put in its place")
    (states / "4.state").write_bytes(b"not a training state")
    for name in ("net_g_latest.pth", "net_g_stage1.pth", "memd_stage1.pth", "net_t_2.pth"):
        (models / name).touch()
    deleted = prune_checkpoints(str(states), str(models), 2)
    assert sorted(map(os.path.basename, deleted)) == ["1.state", "2.state", "3.state", "net_g_1.pth", "net_g_2.pth"]
    assert sorted(p.name for p in states.iterdir()) == ["10.state", "11.state", "4.state"]
    assert sorted(p.name for p in models.iterdir()) == [
        "memd_stage1.pth",
        "net_g_10.pth",
        "net_g_11.pth",
        "net_g_3.pth",
        "net_g_latest.pth",
        "net_g_stage1.pth",
        "net_t_2.pth",
    ]


def test_no_unsafe_loading_or_code_execution_in_the_plugin() -> None:
    root = Path(__file__).resolve().parents[2]
    sources = [*root.glob("erl_plugin/**/*.py"), *root.glob("tools/*.py"), root / "erl_plugin_hook.py"]
    for path in sources:
        text = path.read_text()
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            assert "weights_only=True" in call.group(0), f"{path}: {call.group(0)}"
        assert not re.search(r"(?<![\w.])(exec|eval)\(", text), f"{path} calls exec or eval"


@pytest.mark.parametrize(
    ("section", "key", "value"), [("logger", "keep_last", 0), ("train", "max_consecutive_nonfinite", "5")]
)
def test_fault_options_are_checked_up_front(tiny_lmdb: dict[str, str], section: str, key: str, value: Any) -> None:
    opt = erl_options(tiny_lmdb, "x", STAGES)
    opt[section][key] = value
    with pytest.raises(OptionsError, match=re.escape(f"x.yml: {section}.{key}: {value!r} must be a positive integer")):
        validate_options(opt, "x.yml", is_train=True)
