"""Grids of training runs over seeds, evaluated on held-out data, in one resumable report.

A study file (YAML) names the runs and how to compare them::

    name: fidelity
    seeds: [0, 1, 2]
    baseline: memd_equal_iters            # every row is compared with this one, image by image
    iters_scale: 1.0                      # scales every iteration count of every run (see scale_iterations)
    selection_set: {name: val, layout: rain100h, dataroot: datasets/rain_generalization/val}
    test_sets:
      - {name: test, layout: rain100h, dataroot: datasets/rain_generalization/test}
    runs:
      erl:                                # trained: an options file, with dotted-key overrides
        options: options/study/erl.yml
        set: {network_g.entangle: mlgd}
      memd_stage1:                        # not trained: another run's checkpoint
        from_run: erl
        checkpoint: memd_stage1.pth
      memd_equal_time:                    # trained for the CPU time of another run
        options: options/study/memd.yml
        equal_time: {to: erl, rate_from: memd_equal_iters}   # iterations = erl's CPU s / memd's CPU s per iter

A trained run may start from another run's network (``start_from: {network_g: <run>, network_t: <run>}``,
same seed): every finished run's network is kept in ``<out>/checkpoints/``, and ``tools/study.py --park``
keeps each unfinished run's newest checkpoint in ``<out>/parked/``, so a study goes on in a later sitting
without the ``experiments/`` folders. ``score: false`` trains and keeps a run without scoring it (a teacher).

Every trained run is a real ``python -m erl_plugin.train ... --auto_resume`` process (one thread per run
by default, ``jobs`` at a time), named ``study_<study>_<run>_s<seed>`` under ``experiments/``. When it
ends, its final network is scored image by image on the selection set and on every test set
(protocol ``basicsr``) and ``<out>/runs/<run>_s<seed>.json`` is written atomically: a study started
again skips what is finished and resumes what was interrupted. The report gives, per set, mean and
standard deviation over seeds, the paired difference to the baseline with a 95% bootstrap interval
over seeds and images, the share of images improved (the paper's Fig. 3), the wall clock per run,
and a plot of validation PSNR against iteration for every run.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from erl_plugin.engine.options import (
    ITERS_SCALE_ENV,
    OptionsError,
    apply_overrides,
    load_options,
    load_yaml,
    scale_iterations,
)
from erl_plugin.models.schedulers import STOP_EVENT
from erl_plugin.utils.checkpoint import checkpoint_iterations
from erl_plugin.utils.outputs import check_not_input, open_log, output_lock, write_file, write_text
from erl_plugin.utils.resume import first_difference

PROTOCOL = "basicsr"
BOOTSTRAP_SAMPLES = 10000
_RUN_KEYS = {"options", "set", "from_run", "checkpoint", "equal_time", "label", "seeds", "start_from", "score"}
START_FROM = ("network_g", "network_t")
"""What a trained run can load from another run's banked network (``path.pretrain_<key>``)."""
_STUDY_KEYS = {
    "name",
    "seeds",
    "baseline",
    "reference",
    "iters_scale",
    "selection_set",
    "test_sets",
    "runs",
    "threads",
    "jobs",
    "contrasts",
}
_CONSUMED = re.compile(r"End of training(?: \(.*\))?\. Time consumed: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")


class StudyError(ValueError):
    """A study file that cannot run; the message names the file, the key and what is allowed."""


# ----------------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class RunSpec:
    """One row of the study: how its network is obtained for a seed."""

    name: str
    label: str
    seeds: tuple[int, ...]
    options: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    from_run: str | None = None
    checkpoint: str = "net_g_latest.pth"
    equal_time: Mapping[str, str] | None = None
    start_from: Mapping[str, str] = field(default_factory=dict)
    """``network_g`` / ``network_t`` -> the run whose banked network (same seed) this run starts from."""
    score: bool = True
    """False for a run whose network is not a derainer (a teacher): trained and banked, not scored."""

    @property
    def trained(self) -> bool:
        return self.from_run is None

    @property
    def depends_on(self) -> tuple[str, ...]:
        if self.from_run:
            return (self.from_run,)
        if self.equal_time:
            return (self.equal_time["to"], self.equal_time["rate_from"], *self.start_from.values())
        return tuple(self.start_from.values())


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    path: str
    name: str
    seeds: tuple[int, ...]
    baseline: str
    reference: str | None
    iters_scale: float
    selection_set: Mapping[str, Any]
    test_sets: tuple[Mapping[str, Any], ...]
    runs: Mapping[str, RunSpec]
    threads: int
    jobs: int
    contrasts: tuple[tuple[str, str], ...] = ()
    """Pairs ``(a, b)`` of runs whose paired difference a - b the report gives on every set, seed by seed."""

    @property
    def sets(self) -> tuple[Mapping[str, Any], ...]:
        """The selection set first, then the test sets."""
        return (self.selection_set, *self.test_sets)


def _data_set(entry: Any, where: str, path: str) -> dict[str, Any]:
    if isinstance(entry, str):
        from erl_plugin.evaluation.evaluate import dataset_section  # noqa: PLC0415 (basicsr only when a folder is named)

        name, _, root = entry.rpartition("=")
        try:
            return dataset_section(root, name=name or None)
        except ValueError as error:
            raise StudyError(f"{path}: {where}: {error}") from None
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise StudyError(f"{path}: {where}: expected a dataset section with a name (DerainPairedDataset keys)")
    return dict(entry)


def load_study(path: str, extra_test_sets: Sequence[str] = (), iters_scale: float | None = None) -> Study:
    """Parse and check a study file.

    Args:
        path: The study file.
        extra_test_sets: More test sets, ``[NAME=]FOLDER``, in any layout DerainPairedDataset reads (detected),
            or a folder of ``lq.lmdb`` and ``gt.lmdb``.
        iters_scale: Replaces the file's ``iters_scale`` (e.g. to try a study quickly).
    """
    raw = load_yaml(path, "study")
    if not isinstance(raw, Mapping):
        raise StudyError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _STUDY_KEYS)
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_STUDY_KEYS)}")
    for key in ("name", "seeds", "baseline", "selection_set", "runs"):
        if key not in raw:
            raise StudyError(f"{path}: {key} is missing")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise StudyError(f"{path}: seeds {seeds!r} must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{path}: seeds {seeds!r} repeat a seed")
    runs: dict[str, RunSpec] = {}
    if not isinstance(raw["runs"], Mapping) or not raw["runs"]:
        raise StudyError(f"{path}: runs must map run names to their settings")
    for name, spec in raw["runs"].items():
        spec = spec or {}
        where = f"{path}: runs.{name}"
        bad = sorted(set(spec) - _RUN_KEYS)
        if bad:
            raise StudyError(f"{where}: unknown key(s) {bad}; allowed: {sorted(_RUN_KEYS)}")
        if ("options" in spec) == ("from_run" in spec):
            raise StudyError(f"{where}: give either options (a run to train) or from_run (another run's checkpoint)")
        equal_time = spec.get("equal_time")
        if equal_time is not None and (not isinstance(equal_time, Mapping) or set(equal_time) != {"to", "rate_from"}):
            raise StudyError(f"{where}.equal_time: expected {{to: <run>, rate_from: <run with these options>}}")
        run_seeds = spec.get("seeds", seeds)
        if not isinstance(run_seeds, list) or not run_seeds or not set(run_seeds) <= set(seeds):
            raise StudyError(f"{where}.seeds: {run_seeds!r} must be a non-empty subset of the study's seeds {seeds}")
        start_from = spec.get("start_from") or {}
        if not isinstance(start_from, Mapping) or not set(start_from) <= set(START_FROM):
            raise StudyError(f"{where}.start_from: expected {{network_g: <run>, network_t: <run>}} (either or both)")
        if start_from and "options" not in spec:
            raise StudyError(f"{where}.start_from: only a trained run (options) starts from another run's network")
        if not isinstance(spec.get("score", True), bool):
            raise StudyError(f"{where}.score: {spec['score']!r} must be true or false")
        options = spec.get("options")
        if options is not None and not os.path.isfile(options):
            raise StudyError(f"{where}.options: {options} not found")
        runs[str(name)] = RunSpec(
            name=str(name),
            label=str(spec.get("label", name)),
            seeds=tuple(run_seeds),
            options=options,
            overrides=dict(spec.get("set") or {}),
            from_run=spec.get("from_run"),
            checkpoint=spec.get("checkpoint", "net_g_latest.pth"),
            equal_time=dict(equal_time) if equal_time else None,
            start_from={key: str(value) for key, value in start_from.items()},
            score=spec.get("score", True),
        )
    for run in runs.values():
        for dependency in run.depends_on:
            if dependency not in runs or not runs[dependency].trained:
                raise StudyError(f"{path}: runs.{run.name} depends on {dependency!r}, which is not a trained run")
            if not set(run.seeds) <= set(runs[dependency].seeds):
                raise StudyError(f"{path}: runs.{run.name} has seeds that {dependency!r} does not run")
    for key in ("baseline", "reference"):
        if raw.get(key) is not None and raw[key] not in runs:
            raise StudyError(f"{path}: {key} {raw[key]!r} is not a run; runs: {sorted(runs)}")
        if raw.get(key) is not None and not runs[raw[key]].score:
            raise StudyError(f"{path}: {key} {raw[key]!r} is not scored (score: false)")
    contrasts = raw.get("contrasts") or []
    if not isinstance(contrasts, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(name in runs and runs[name].score for name in pair)
        for pair in contrasts
    ):
        raise StudyError(f"{path}: contrasts: {contrasts!r} must be a list of [run, run] pairs of scored runs")
    scale = raw.get("iters_scale", 1.0) if iters_scale is None else iters_scale
    if not isinstance(scale, int | float) or not scale > 0:
        raise StudyError(f"{path}: iters_scale {scale!r} must be a number > 0")
    test_sets = [_data_set(s, f"test_sets[{i}]", path) for i, s in enumerate(raw.get("test_sets") or [])]
    test_sets += [_data_set(s, f"--data {s}", path) for s in extra_test_sets]
    selection = _data_set(raw["selection_set"], "selection_set", path)
    names = [selection["name"], *(s["name"] for s in test_sets)]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: the selection and test sets need distinct names, got {names}")
    return Study(
        path=path,
        name=str(raw["name"]),
        seeds=tuple(seeds),
        baseline=raw["baseline"],
        reference=raw.get("reference"),
        iters_scale=float(scale),
        selection_set=selection,
        test_sets=tuple(test_sets),
        runs=runs,
        threads=int(raw.get("threads", 1)),
        jobs=int(raw.get("jobs", 1)),
        contrasts=tuple((str(a), str(b)) for a, b in contrasts),
    )


# ------------------------------------------------------------------------------------------ runs
def experiment_name(study: Study, run: str, seed: int) -> str:
    """BasicSR experiment name of a trained run (with the iteration scale when it is not 1)."""
    scale = "" if study.iters_scale == 1 else f"_x{study.iters_scale:g}"
    return f"study_{study.name}_{run}_s{seed}{scale}"


def result_path(out: Path, run: str, seed: int) -> Path:
    return out / "runs" / f"{run}_s{seed}.json"


def banked_path(out: Path, run: str, seed: int) -> Path:
    """Where a finished run's network is kept in the study folder, for runs that start from it (and for
    later sittings: the experiment folders are not kept)."""
    return out / "checkpoints" / f"{run}_s{seed}.pth"


def _write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")


def run_options(study: Study, run: RunSpec, seed: int, out: Path) -> tuple[dict[str, Any], float]:
    """The resolved options of a trained run, and the iteration scale applied to its base options."""
    assert run.options is not None
    opt = load_options(run.options)
    overrides = [f"{key}={json.dumps(value)}" for key, value in run.overrides.items()]
    try:
        opt = apply_overrides(opt, overrides, run.options)
    except OptionsError as error:
        raise StudyError(f"{study.path}: runs.{run.name}.set: {error}") from None
    factor = study.iters_scale
    if run.equal_time:
        target = json.loads(result_path(out, run.equal_time["to"], seed).read_text())
        reference = json.loads(result_path(out, run.equal_time["rate_from"], seed).read_text())
        # CPU seconds of the training processes (one thread each): the cost on a machine of one's own,
        # unmoved by what else shares this one.
        seconds_per_iter = reference["cpu_seconds"] / trained_iterations(reference)
        base_iters = scale_iterations(opt, factor)["train"]["total_iter"]
        factor *= target["cpu_seconds"] / seconds_per_iter / base_iters
    opt = scale_iterations(opt, factor)
    for key, source in run.start_from.items():
        banked = banked_path(out, source, seed)
        if not banked.is_file():
            raise StudyError(f"{study.path}: runs.{run.name}.start_from.{key}: {banked} is missing (run {source!r})")
        opt.setdefault("path", {})[f"pretrain_{key}"] = str(banked)
    opt["name"] = experiment_name(study, run.name, seed)
    opt["manual_seed"] = seed
    return opt, factor


def train(study: Study, run: RunSpec, seed: int, out: Path) -> dict[str, Any]:
    """Train one run to its end (resuming an interrupted one); returns its options and timing."""
    opt, factor = run_options(study, run, seed, out)
    options_file = out / "options" / f"{run.name}_s{seed}.yml"
    write_text(
        options_file,
        f"# {run.options}, study {study.path}, run {run.name}, seed {seed}, iterations x{factor:.4g}\n"
        + yaml.safe_dump(opt, sort_keys=False),
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(study.threads), MKL_NUM_THREADS=str(study.threads))
    env.pop(ITERS_SCALE_ENV, None)  # the options file holds the study's scale already
    log_file = out / "logs" / f"{run.name}_s{seed}.log"
    command = [sys.executable, "-m", "erl_plugin.train", "-opt", str(options_file), "--auto_resume"]
    unpark(out, opt["name"])
    started = time.time()
    with open_log(log_file) as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time, whatever else runs
    returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        raise RuntimeError(f"{run.name} seed {seed}: training exited {returncode}; see {log_file}")
    experiment = Path("experiments") / opt["name"]
    attempt = {
        "loop_seconds": training_loop_seconds(experiment, started),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    attempts = experiment / "study_attempts.json"
    history = json.loads(attempts.read_text()) if attempts.is_file() else []
    history.append(attempt)
    _write_json(attempts, history)
    return {
        "options": opt,
        "options_file": str(options_file),
        "iterations": int(opt["train"]["total_iter"]),
        "iters_factor": factor,
        # Summed over the attempts that finished (a killed attempt's time is not known).
        "train_seconds": float(sum(a["loop_seconds"] for a in history)),
        "cpu_seconds": float(sum(a["cpu_seconds"] for a in history)),
        "attempts": len(history),
        "experiment": str(experiment),
        "validation": read_validation(experiment / "validation.jsonl"),
        "headroom": json.loads(headroom.read_text()) if (headroom := experiment / "headroom.json").is_file() else None,
    }


def parked_path(out: Path, experiment_name: str) -> Path:
    """Where :func:`park` keeps an unfinished run's newest checkpoint between sittings."""
    return out / "parked" / experiment_name


def park(study: Study, out: Path) -> list[str]:
    """Copy every unfinished run's newest checkpoint (training state, the networks it names, the validation
    history) into ``<out>/parked/``, so that a later sitting without ``experiments/`` resumes it there.

    Returns:
        The experiments parked.
    """
    parked = []
    for name, seed in pending_jobs(study, out):
        folder = experiment_name(study, name, seed)
        experiment = Path("experiments") / folder
        newest = checkpoint_iterations(str(experiment / "training_states"))
        if not study.runs[name].trained or not newest:
            continue
        state = experiment / "training_states" / f"{newest[0]}.state"
        files = [state, *(p for p in (experiment / "models").glob(f"*_{newest[0]}.pth"))]
        files += [p for p in (experiment / "validation.jsonl", experiment / "study_attempts.json") if p.is_file()]
        target = parked_path(out, folder)
        staging = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for path in files:
            copy = staging / path.relative_to(experiment)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        parked.append(f"{folder} (iteration {newest[0]})")
    return parked


def unpark(out: Path, experiment_name: str) -> None:
    """Put a parked checkpoint back as the experiment folder when that folder is missing (a new sitting)."""
    source, experiment = parked_path(out, experiment_name), Path("experiments") / experiment_name
    if source.is_dir() and not experiment.exists():
        shutil.copytree(source, experiment)


def trained_iterations(record: Mapping[str, Any]) -> int:
    """The iterations a finished run trained: ``train.total_iter``, or where a plateau stop ended it."""
    stops = [r["iter"] for r in record.get("validation", []) if str(r.get("event", "")).startswith(STOP_EVENT)]
    return int(stops[-1]) if stops else int(record["iterations"])


def training_loop_seconds(experiment: Path, since: float) -> float:
    """Seconds BasicSR's loop took ("Time consumed", validations included) in the newest log written after ``since``."""
    logs = sorted((p for p in experiment.glob("train_*.log") if p.stat().st_mtime >= since), key=os.path.getmtime)
    for log in reversed(logs):
        found = _CONSUMED.findall(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            days, hours, minutes, seconds = (int(v or 0) for v in found[-1])
            return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    raise RuntimeError(f"{experiment}: no 'End of training. Time consumed' in a log written by this run")


def read_validation(path: Path) -> list[dict[str, Any]]:
    """``validation.jsonl``: the last record per (iteration, dataset), by iteration."""
    if not path.is_file():
        return []
    records: dict[tuple[int, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[(record["iter"], record["dataset"])] = record
    return [records[key] for key in sorted(records)]


def _score_sets(study: Study, restore: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Per-image PSNR/SSIM (protocol ``basicsr``) of ``restore(rainy)`` on the selection and test sets."""
    from erl_plugin.evaluation.evaluate import read_pairs, score, test_pairs  # noqa: PLC0415 (torch only when scoring)

    scores: dict[str, Any] = {}
    for data in study.sets:
        images = {}
        for name, rainy, clean in read_pairs(test_pairs(data)):
            result = score(restore(rainy), clean)
            images[name] = {"psnr": result.psnr, "ssim": result.ssim}
        scores[data["name"]] = {"protocol": PROTOCOL, "images": images}
    return scores


def score_sets(study: Study, options_file: str, checkpoint: str) -> dict[str, Any]:
    """Per-image scores of a checkpoint's network on the selection and test sets."""
    from erl_plugin.evaluation.evaluate import derain, load_network  # noqa: PLC0415

    net = load_network(options_file, checkpoint).net
    return _score_sets(study, lambda rainy: derain(net, rainy))


def rainy_scores(study: Study) -> dict[str, Any]:
    """Scores of the rainy inputs themselves, per set."""
    return _score_sets(study, lambda rainy: rainy)


def complete_run(study: Study, run: RunSpec, seed: int, out: Path) -> None:
    """Train (or take) one run's network, score it, and write its result file."""
    if run.trained:
        record = train(study, run, seed, out)
        checkpoint = os.path.join(record["experiment"], "models", run.checkpoint)
    else:
        source = json.loads(result_path(out, run.from_run, seed).read_text())
        record = {key: source[key] for key in ("options_file", "experiment")}
        record.update(from_run=run.from_run, train_seconds=None, cpu_seconds=None, validation=[])
        checkpoint = os.path.join(record["experiment"], "models", run.checkpoint)
    if run.trained:
        bank = banked_path(out, run.name, seed)
        write_file(bank, Path(checkpoint).read_bytes())
        record["banked"] = str(bank)
    record.update(run=run.name, label=run.label, seed=seed, checkpoint=checkpoint)
    record["scores"] = score_sets(study, record["options_file"], checkpoint) if run.score else {}
    _write_json(result_path(out, run.name, seed), record)
    if run.trained:
        shutil.rmtree(parked_path(out, Path(record["experiment"]).name), ignore_errors=True)


def pending_jobs(study: Study, out: Path) -> list[tuple[str, int]]:
    """``(run, seed)`` pairs without a result file, run by run in the study's order (each over its seeds)."""
    return [
        (name, seed)
        for name, run in study.runs.items()
        for seed in run.seeds
        if not result_path(out, name, seed).is_file()
    ]


def claim_folder(study: Study, out: Path, record: bool = True) -> None:
    """Refuse a study folder of another study or scale; record this one's in ``<out>/study.json`` (if ``record``)."""
    check_not_input(out, [data["dataroot"] for data in study.sets if data.get("dataroot")], "study folder")
    marker = out / "study.json"
    current = {"study": study.name, "iters_scale": study.iters_scale}
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded != current:
            raise StudyError(
                f"{out} holds study {recorded['study']!r} at iters_scale {recorded['iters_scale']}, not "
                f"{study.name!r} at {study.iters_scale}: give another --out, or delete {out} to start over"
            )
        check_finished_runs(study, out)
        return
    if record:
        _write_json(marker, current)


def check_finished_runs(study: Study, out: Path) -> None:
    """Refuse a study folder whose finished runs were trained with other options than this study gives them
    (another study file of the same name, or an edited one): their results would be reported as this one's.

    Raises:
        StudyError: Naming the run, the seed and the first option that differs.
    """
    for name, run in study.runs.items():
        for seed in run.seeds if run.trained else ():
            path = result_path(out, name, seed)
            recorded = json.loads(path.read_text()).get("options") if path.is_file() else None
            if recorded is None:
                continue
            wanted = json.loads(json.dumps(run_options(study, run, seed, out)[0]))
            found = first_difference(recorded, wanted)
            if found is not None:
                key, before, now = found
                raise StudyError(
                    f"{path}: run {name!r} seed {seed} was trained with {key}: {before!r}, but {study.path} gives "
                    f"{key}: {now!r}; use another --out (or study name) for these runs, or delete {path} to retrain"
                )


def run_study(study: Study, out: Path, jobs: int | None = None, log: Callable[[str], None] = print) -> None:
    """Run every missing ``(run, seed)``, ``jobs`` trainings at a time, dependencies first."""
    with output_lock(out):
        claim_folder(study, out)
        _run_jobs(study, out, jobs or study.jobs, log)


def _run_jobs(study: Study, out: Path, jobs: int, log: Callable[[str], None]) -> None:
    pending = pending_jobs(study, out)
    total = sum(len(run.seeds) for run in study.runs.values())
    done = total - len(pending)
    log(f"study {study.name}: {done} of {total} runs finished, {len(pending)} to go, {jobs} at a time -> {out}")
    running: dict[Future, tuple[str, int, float]] = {}
    failures = []
    failed: set[tuple[str, int]] = set()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            blocked = set(pending) | {(n, s) for n, s, _ in running.values()} | failed
            for job in list(pending):
                if len(running) >= jobs:
                    break
                name, seed = job
                if any((dependency, seed) in blocked for dependency in study.runs[name].depends_on):
                    continue
                pending.remove(job)
                log_file = out / "logs" / f"{name}_s{seed}.log"
                log(f"{name} seed {seed}: started ({done} of {total} finished; its training log: {log_file})")
                running[pool.submit(complete_run, study, study.runs[name], seed, out)] = (
                    name,
                    seed,
                    time.perf_counter(),
                )
            if not running:
                failures.append(f"{[f'{n} s{s}' for n, s in pending]} wait on failed runs")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name, seed, started = running.pop(future)
                error = future.exception()
                if error is not None:
                    failed.add((name, seed))
                    failures.append(f"{name} seed {seed}: {error}")
                    log(f"{name} seed {seed}: FAILED: {error}")
                    continue
                done += 1
                result = json.loads(result_path(out, name, seed).read_text())
                means = ", ".join(
                    f"{s} {np.mean([v['psnr'] for v in r['images'].values()]):.2f} dB"
                    for s, r in result["scores"].items()
                )
                log(
                    f"{name} seed {seed}: done in {time.perf_counter() - started:.0f} s ({done} of {total} finished); "
                    f"{means or 'not scored'}"
                )
    if failures:
        raise RuntimeError("; ".join(failures))


# --------------------------------------------------------------------------------------- report
def bootstrap_interval(
    diff: np.ndarray, rng: np.random.Generator, samples: int = BOOTSTRAP_SAMPLES
) -> tuple[float, float]:
    """95% interval of the mean of ``diff`` (seeds x images), resampling seeds and images independently."""
    seeds, images = diff.shape
    seed_draws = rng.integers(0, seeds, (samples, seeds))
    image_draws = rng.integers(0, images, (samples, images))
    means = np.empty(samples)
    for index in range(samples):
        means[index] = diff[np.ix_(seed_draws[index], image_draws[index])].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def load_results(study: Study, out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Finished result files, by run and seed."""
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in study.runs:
        for seed in study.seeds:
            path = result_path(out, name, seed)
            if path.is_file():
                results.setdefault(name, {})[seed] = json.loads(path.read_text())
    return results


def _matrix(runs: Mapping[int, Mapping[str, Any]], seeds: Sequence[int], data: str, metric: str) -> np.ndarray:
    images = sorted(runs[seeds[0]]["scores"][data]["images"])
    return np.array([[runs[s]["scores"][data]["images"][i][metric] for i in images] for s in seeds])


def summarize(
    study: Study, out: Path, rainy: Mapping[str, Any], domains: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, Any]:
    """The report's numbers: per set, domain group and run, means, spreads and paired differences to the baseline.

    ``rainy`` holds the rainy inputs' scores (:func:`rainy_scores`), ``domains`` image -> rain domain per set.
    """
    records = load_results(study, out)
    results = {name: runs for name, runs in records.items() if study.runs[name].score}
    rng = np.random.default_rng(0)
    summary: dict[str, Any] = {"sets": {}, "rainy": {}, "runs": {}}
    for name, runs in records.items():
        seconds = [r["train_seconds"] for r in runs.values() if r.get("train_seconds") is not None]
        cpu = [r["cpu_seconds"] for r in runs.values() if r.get("cpu_seconds") is not None]
        summary["runs"][name] = {
            "label": study.runs[name].label,
            "seeds": sorted(runs),
            "iterations": sorted({trained_iterations(r) for r in runs.values() if r.get("iterations")}),
            "train_seconds_mean": float(np.mean(seconds)) if seconds else None,
            "cpu_seconds_mean": float(np.mean(cpu)) if cpu else None,
            "from_run": study.runs[name].from_run,
        }
    compared = [name for name in (study.baseline, study.reference) if name is not None]
    for data in study.sets:
        data_name = data["name"]
        groups: dict[str, str | None] = {"all": None}
        if domains and data_name in domains:
            groups.update({domain: domain for domain in sorted(set(domains[data_name].values()))})

        def kept(images: Sequence[str], domain: str | None, data_name: str = data_name) -> list[int]:
            return [i for i, image in enumerate(images) if domain is None or domains[data_name].get(image) == domain]

        inputs = rainy[data_name]["images"]
        names = sorted(inputs)
        summary["rainy"][data_name] = {
            group: {
                metric: float(np.mean([inputs[names[i]][metric] for i in kept(names, domain)]))
                for metric in ("psnr", "ssim")
            }
            for group, domain in groups.items()
        }
        rows: dict[str, Any] = {}
        for name, runs in results.items():
            seeds = sorted(runs)
            psnr, ssim = _matrix(runs, seeds, data_name, "psnr"), _matrix(runs, seeds, data_name, "ssim")
            images = sorted(runs[seeds[0]]["scores"][data_name]["images"])
            row: dict[str, Any] = {"seeds": seeds, "images": len(images), "groups": {}}
            for group, domain in groups.items():
                keep = kept(images, domain)
                per_seed = psnr[:, keep].mean(axis=1)
                entry: dict[str, Any] = {
                    "psnr_mean": float(per_seed.mean()),
                    "psnr_std": float(per_seed.std(ddof=1)) if len(seeds) > 1 else None,
                    "ssim_mean": float(ssim[:, keep].mean()),
                    "ssim_std": float(ssim[:, keep].mean(axis=1).std(ddof=1)) if len(seeds) > 1 else None,
                    "per_seed_psnr": per_seed.tolist(),
                    "vs": {},
                }
                for other in compared:
                    paired = sorted(set(seeds) & set(results.get(other, {})))
                    if other == name or not paired:
                        continue
                    entry["vs"][other] = _paired(runs, results[other], paired, data_name, rng, keep)
                row["groups"][group] = entry
            rows[name] = row
        summary["sets"][data_name] = rows
        summary.setdefault("contrasts", {})[data_name] = _contrasts(study, results, data_name, rng)
    return summary


def _paired(
    first: Mapping[int, Any],
    second: Mapping[int, Any],
    seeds: list[int],
    data_name: str,
    rng: np.random.Generator,
    keep: list[int] | None = None,
) -> dict[str, Any]:
    """PSNR of ``first`` - ``second`` paired by seed and image (the images ``keep`` lists, default all): the mean,
    its 95% bootstrap interval, each seed's mean and the share of images improved."""
    diff = _matrix(first, seeds, data_name, "psnr") - _matrix(second, seeds, data_name, "psnr")
    if keep is not None:
        diff = diff[:, keep]
    low, high = bootstrap_interval(diff, rng)
    return {
        "delta": float(diff.mean()),
        "low": low,
        "high": high,
        "seeds": seeds,
        "per_seed": diff.mean(axis=1).tolist(),
        "improved_share": float((diff.mean(axis=0) > 0).mean()),
    }


def _contrasts(
    study: Study, results: Mapping[str, Mapping[int, Any]], data_name: str, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """The study's ``contrasts`` on one set (:func:`_paired`, with the two runs' names)."""
    found = []
    for first, second in study.contrasts:
        seeds = sorted(set(results.get(first, {})) & set(results.get(second, {})))
        if seeds:
            found.append({"runs": [first, second], **_paired(results[first], results[second], seeds, data_name, rng)})
    return found


def _pm(mean: float, std: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _delta(entry: Mapping[str, Any], name: str, other: str) -> tuple[str, str]:
    if name == other:
        return "(itself)", ""
    found = entry["vs"].get(other)
    if found is None:
        return "", ""
    seeds = f" ({len(found['seeds'])} seeds)" if len(found["seeds"]) != len(entry["per_seed_psnr"]) else ""
    return (
        f"{found['delta']:+.2f} [{found['low']:+.2f}, {found['high']:+.2f}]{seeds}",
        f"{100 * found['improved_share']:.0f}%",
    )


def format_report(
    study: Study,
    summary: Mapping[str, Any],
    machine: str,
    records: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
) -> str:
    """The Markdown report: one table per set (and per domain group), the runs' costs, and from the runs'
    ``records`` (:func:`load_results`) their schedule events and headroom."""
    compared = [name for name in (study.baseline, study.reference) if name is not None]
    lines = [
        f"# Study `{study.name}` ({study.path})",
        "",
        f"Machine: {machine}. Seeds: {list(study.seeds)} (a run may use fewer). Iteration scale: "
        f"{study.iters_scale:g}. Protocol: {PROTOCOL} (BasicSR Y-channel PSNR/SSIM, crop_border 0), "
        "PSNR and SSIM as mean ± standard deviation over seeds. Δ: the paired difference (by seed and "
        f"image) to the named run, with a 95% bootstrap interval over seeds and images ({BOOTSTRAP_SAMPLES} "
        "resamples); images improved: the share of images whose PSNR, averaged over seeds, beats that "
        f"run's. `{study.selection_set['name']}` is the selection split (settings are chosen on it); the "
        "others are test sets, never tuned on.",
    ]
    header = "".join(f" Δ PSNR vs `{other}` [95% CI] | improved |" for other in compared)
    for data_name, rows in summary["sets"].items():
        groups = next(iter(rows.values()))["groups"] if rows else {}
        for group in groups:
            inputs = summary["rainy"][data_name][group]
            lines += ["", f"## `{data_name}`" + (f", {group} rain" if group != "all" else "")]
            lines += [
                "",
                f"| run | seeds | PSNR (dB, {PROTOCOL}) | SSIM ({PROTOCOL}) |{header}",
                "| --- | --- | --- | --- |" + " --- | --- |" * len(compared),
            ]
            lines.append(f"| rainy input | - | {inputs['psnr']:.2f} | {inputs['ssim']:.4f} |" + " | |" * len(compared))
            for name, row in rows.items():
                entry = row["groups"][group]
                cells = "".join(" {} | {} |".format(*_delta(entry, name, other)) for other in compared)
                lines.append(
                    f"| {study.runs[name].label} | {len(row['seeds'])} | {_pm(entry['psnr_mean'], entry['psnr_std'])} "
                    f"| {_pm(entry['ssim_mean'], entry['ssim_std'], 4)} |{cells}"
                )
    contrasts = summary.get("contrasts", {})
    if any(contrasts.values()):
        lines += [
            "",
            "## Contrasts (paired PSNR difference, dB, 95% bootstrap interval over seeds and images; per seed)",
            "",
            "| set | difference | seeds | Δ PSNR [95% CI] | per seed |",
            "| --- | --- | --- | --- | --- |",
        ]
        for data_name, rows in contrasts.items():
            for row in rows:
                first, second = (study.runs[name].label for name in row["runs"])
                per_seed = ", ".join(f"{v:+.2f}" for v in row["per_seed"])
                lines.append(
                    f"| `{data_name}` | {first} - {second} | {len(row['seeds'])} | {row['delta']:+.2f} "
                    f"[{row['low']:+.2f}, {row['high']:+.2f}] | {per_seed} |"
                )
    lines += [
        "",
        "## Cost",
        "",
        "| run | iterations | training loop (BasicSR's time consumed, validation included) | CPU time of the "
        "training process |",
        "| --- | --- | --- | --- |",
    ]
    for run in summary["runs"].values():
        seconds, cpu = run["train_seconds_mean"], run["cpu_seconds_mean"]
        if seconds is None:
            cost = f"(checkpoint of `{run['from_run']}`) | "
        else:
            cost = f"{seconds / 60:.1f} min | " + (f"{cpu / 60:.1f} min" if cpu is not None else "")
        lines.append(f"| {run['label']} | {', '.join(map(str, run['iterations'])) or '-'} | {cost} |")
    return "\n".join(lines + _events_and_headroom(study, records or {})) + "\n"


def _events_and_headroom(study: Study, results: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[str]:
    """The learning-rate schedule's events (PlateauLR) and the headroom measured at each feature loss's start."""
    lines: list[str] = []
    events = [
        f"- {study.runs[name].label}, seed {seed}, iteration {record['iter']}: {record['event']}"
        for name, runs in results.items()
        for seed, result in sorted(runs.items())
        for record in result.get("validation", [])
        if record.get("event")
    ]
    if events:
        lines += ["", "## Learning-rate schedule (PlateauLR on the runs' validation set)", "", *events]
    rooms = [
        (name, seed, r["headroom"])
        for name, runs in results.items()
        for seed, r in sorted(runs.items())
        if r.get("headroom")
    ]
    if rooms:
        lines += [
            "",
            "## Headroom when the feature loss starts (PSNR dB, basicsr, on the runs' validation set)",
            "",
            "| run | seed | student | midpoint | target | target - student | teacher clean to clean | "
            "teacher, features zeroed | λ_fre balancing the gradients |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, seed, room in rooms:
            balanced = f"{room['balanced_lambda']:.3g}" if room.get("balanced_lambda") is not None else "-"
            lines.append(
                f"| {study.runs[name].label} | {seed} | {room['student']:.2f} | {room['midpoint']:.2f} | "
                f"{room['target']:.2f} | {room['margin']:+.2f} | {room['teacher']:.2f} | "
                f"{room['teacher_without_features']:.2f} | {balanced} |"
            )
    return lines


def headline(study: Study, summary: Mapping[str, Any]) -> list[str]:
    """One line per run and test set: its paired difference to the baseline on the whole set."""
    lines = []
    base = study.runs[study.baseline].label
    for data in study.test_sets:
        for name, row in summary["sets"][data["name"]].items():
            found = row["groups"]["all"]["vs"].get(study.baseline)
            if found is not None:
                lines.append(
                    f"{study.runs[name].label} - {base}: {found['delta']:+.2f} dB PSNR [95% CI {found['low']:+.2f}, "
                    f"{found['high']:+.2f}] on {data['name']} ({PROTOCOL} protocol, {len(found['seeds'])} seed(s))"
                )
    return lines


def short_of_gain(study: Study, summary: Mapping[str, Any], min_gain_db: float) -> list[str]:
    """Runs whose mean PSNR on a test set beats the rainy input by less than ``min_gain_db``."""
    short = []
    for data in study.test_sets:
        rainy = summary["rainy"][data["name"]]["all"]["psnr"]
        for name, row in summary["sets"][data["name"]].items():
            gain = row["groups"]["all"]["psnr_mean"] - rainy
            if gain < min_gain_db:
                short.append(f"{name} gains {gain:+.2f} dB over the rainy input on {data['name']}")
    return short


def plot_validation(study: Study, out: Path, path: Path) -> None:
    """Validation PSNR against iteration, one panel per trained run, one line per seed."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    results = load_results(study, out)
    trained = [name for name in study.runs if study.runs[name].trained and name in results]
    columns = min(3, max(1, len(trained)))
    rows = math.ceil(len(trained) / columns) or 1
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, name in zip(axes.flat, trained, strict=False):
        stages: dict[str, int] = {}
        for seed, result in sorted(results[name].items()):
            points = [(r["iter"], r["metrics"].get(f"psnr_{PROTOCOL}")) for r in result["validation"]]
            points = [(i, v) for i, v in points if v is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker=".", label=f"seed {seed}")
            for record in result["validation"]:
                if "stage" in record:
                    stages[record["stage"]] = min(stages.get(record["stage"], record["iter"]), record["iter"])
        for stage, first in stages.items():  # ERLModel runs: where each stage's validations begin
            axis.axvline(first, color="grey", lw=0.6, ls=":")
            axis.annotate(stage, (first, 1), xycoords=("data", "axes fraction"), fontsize=6, va="top", rotation=90)
        axis.set_title(study.runs[name].label, fontsize=9)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes[:, 0]:
        axis.set_ylabel(f"PSNR (dB, {PROTOCOL})")
    for axis in list(axes.flat)[len(trained) :]:
        axis.axis("off")
    sets = sorted({r["dataset"] for runs in results.values() for result in runs.values() for r in result["validation"]})
    figure.suptitle(f"study {study.name}: PSNR during training on {', '.join(sets) or '-'}", fontsize=10)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    write_file(path, image.getbuffer())


def machine_description() -> str:
    """CPU model and count, and the torch version."""
    import torch  # noqa: PLC0415

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, no GPU used, torch {torch.__version__}"


def domains_of(data: Mapping[str, Any]) -> dict[str, str] | None:
    """Image name -> rain domain, from the ``synthesis.json`` beside a generalization split, if any."""
    root = data.get("dataroot")
    summary = Path(root).parent / "synthesis.json" if root else None
    if summary is None or not summary.is_file():
        return None
    images = (json.loads(summary.read_text()).get(Path(root).name) or {}).get("images")
    return {name: entry["domain"] for name, entry in images.items()} if images else None


def _without_machine(report: str) -> str:
    """A report's text without the machine it was written on (the one line that names it)."""
    return re.sub(r"Machine: .*?\. Seeds:", "Seeds:", report, count=1)


def write_report(study: Study, out: Path, rewrite: bool = False) -> tuple[Path, dict[str, Any], bool]:
    """Write ``report.md``, ``report.json`` and ``validation.png`` into ``out``; returns the Markdown path, the
    summary, and whether they were written.

    A report that says what this one would (another machine aside: a fresh clone of a finished study) is left
    as it is unless ``rewrite``: a study folder in the repository is not rewritten by running its command.
    """
    domains = {d["name"]: m for d in study.sets if (m := domains_of(d))}
    rainy_file = out / "rainy_scores.json"
    if not rainy_file.is_file():
        _write_json(rainy_file, rainy_scores(study))
    summary = summarize(study, out, json.loads(rainy_file.read_text()), domains)
    machine = machine_description()
    report = out / "report.md"
    text = format_report(study, summary, machine, load_results(study, out)) + "\n![validation PSNR](validation.png)\n"
    if not rewrite and report.is_file():
        if _without_machine(report.read_text(encoding="utf-8")) == _without_machine(text):
            return report, summary, False
    _write_json(out / "report.json", {"study": study.path, "machine": machine, **summary})
    plot_validation(study, out, out / "validation.png")
    write_text(report, text)
    return report, summary, True
