"""``erl-test`` / ``python -m erl_plugin.test``: BasicSR's test pipeline with the plugin loaded.

Example:
    erl-test -opt options/test/memd_demo.yml
"""

import sys
from collections.abc import Sequence

from erl_plugin.engine.entry import run


def main(argv: Sequence[str] | None = None) -> int:
    """Test from an options file; returns the exit status."""
    # Imported here, after erl_plugin (through erl_plugin.engine.entry) has patched basicsr.
    from basicsr.test import test_pipeline

    return run(test_pipeline, argv, is_train=False, prog="erl-test")


if __name__ == "__main__":
    sys.exit(main())
