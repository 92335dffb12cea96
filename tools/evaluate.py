"""`erl-evaluate` from a checkout: see :mod:`erl_plugin.cli.evaluate`."""

import sys

from erl_plugin.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
