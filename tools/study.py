"""Train a grid of configurations over seeds, score them on held-out data, and write one report.

Resumable: finished runs are kept (``<out>/runs/<run>_s<seed>.json``), an interrupted training resumes from
its last checkpoint. See erl_plugin/study.py for the study file.

Examples:
    python tools/study.py options/study/fidelity.yml --jobs 2
    python tools/study.py options/study/fidelity.yml --report-only
    python tools/study.py options/study/fidelity.yml --data Rain100H=datasets/Rain100H
"""

import argparse
import sys
from pathlib import Path

from erl_plugin.options import OptionsError
from erl_plugin.study import StudyError, load_study, run_study, write_report


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) a study and write its report; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (YAML)")
    parser.add_argument("--out", help="study folder (default: studies/<name>)")
    parser.add_argument("--jobs", type=int, help="trainings at a time (default: the study's jobs, else 1)")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER",
        help="another test set, in either Rain100H form (repeatable)",
    )
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.study, args.data)
    except (StudyError, OptionsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("studies") / study.name)
    status = 0
    if not args.report_only:
        try:
            run_study(study, out, args.jobs)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
    report = write_report(study, out)
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
