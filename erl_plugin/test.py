"""``erl-test`` / ``python -m erl_plugin.test``: test from an options file with the plugin's pipeline.

Example:
    erl-test -opt options/test/memd_demo.yml
"""

import sys
from collections.abc import Sequence

from erl_plugin.engine.entry import run
from erl_plugin.engine.pipeline import test_pipeline


def main(argv: Sequence[str] | None = None) -> int:
    """Test from an options file; returns the exit status."""
    return run(test_pipeline, argv, is_train=False, prog="erl-test")


if __name__ == "__main__":
    sys.exit(main())
