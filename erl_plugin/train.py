"""``erl-train`` / ``python -m erl_plugin.train``: train from an options file with the plugin's pipeline.

Example:
    erl-train -opt options/memd_demo.yml --set train.total_iter=200
    torchrun --nproc_per_node=2 -m erl_plugin.train -opt options/memd_demo.yml --launcher pytorch
"""

import sys
from collections.abc import Sequence

from erl_plugin.engine.entry import run
from erl_plugin.engine.pipeline import train_pipeline


def main(argv: Sequence[str] | None = None) -> int:
    """Train from an options file; returns the exit status."""
    return run(train_pipeline, argv, is_train=True, prog="erl-train")


if __name__ == "__main__":
    sys.exit(main())
