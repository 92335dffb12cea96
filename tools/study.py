"""Train a grid of configurations over seeds, score them on held-out data, and write one report.

Resumable: finished runs are kept (``<out>/runs/<run>_s<seed>.json``), an interrupted training resumes from
its last checkpoint. See erl_dev/study.py for the study file.

Examples:
    python tools/study.py options/study/fidelity.yml --jobs 2
    python tools/study.py options/study/fidelity.yml --report-only
    python tools/study.py options/study/converged.yml --park   # a stopped study: keep unfinished runs for later
    python tools/study.py options/study/fidelity.yml --data Rain100H=datasets/Rain100H
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # erl_dev: the checkout's development tools

from erl_dev.study import (
    StudyError,
    claim_folder,
    headline,
    load_study,
    park,
    run_study,
    short_of_gain,
    write_report,
)
from erl_plugin.engine.options import ITERS_SCALE_ENV, OptionsError, requested_iters_scale
from erl_plugin.utils.outputs import OutputError, output_lock


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) a study and write its report; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (YAML)")
    parser.add_argument(
        "--out", help="study folder (default: studies/<name>; studies/<name>_x<F> with another --iters-scale F)"
    )
    parser.add_argument("--jobs", type=int, help="trainings at a time (default: the study's jobs, else 1)")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER",
        help="another test set, in any layout the datasets read (detected), or lq.lmdb + gt.lmdb (repeatable)",
    )
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    parser.add_argument(
        "--park",
        action="store_true",
        help="copy each unfinished run's newest checkpoint into <out>/parked/ (the study must be stopped): a later "
        "sitting without experiments/ resumes from there",
    )
    parser.add_argument(
        "--iters-scale",
        type=float,
        help=f"replace the study's iters_scale (default: ${ITERS_SCALE_ENV}; a study folder keeps one scale)",
    )
    parser.add_argument(
        "--min-gain-db",
        type=float,
        help="exit 1 unless every run beats the rainy input by this PSNR on every test set",
    )
    args = parser.parse_args(argv)
    try:
        requested = requested_iters_scale(args.iters_scale)[0]
        study = load_study(args.study, args.data, requested)
        # A quick try at another scale than the study file's gets a folder of its own, never the study's.
        rescaled = requested is not None and requested != load_study(args.study).iters_scale
        out = Path(args.out or Path("studies") / (f"{study.name}_x{study.iters_scale:g}" if rescaled else study.name))
        if args.park:
            with output_lock(out):
                parked = park(study, out)
            print(
                "\n".join(f"parked {name}" for name in parked) or "nothing to park: no unfinished run has a checkpoint"
            )
            return 0
        if args.report_only:
            claim_folder(study, out, record=False)
        else:
            run_study(study, out, args.jobs)
    except (StudyError, OptionsError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report, summary, written = write_report(study, out, rewrite=args.report_only)
    print(report.read_text(encoding="utf-8"))
    print("\n".join(headline(study, summary)))
    if written:
        print(f"report: {report} (plot: {report.with_name('validation.png')})")
    else:
        print(f"report: {report} left as it is: it already says this (--report-only writes it again)")
    short = short_of_gain(study, summary, args.min_gain_db) if args.min_gain_db is not None else []
    if short:
        print(f"error: {'; '.join(short)} (--min-gain-db {args.min_gain_db})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
