"""`erl-export` from a checkout: see :mod:`erl_plugin.cli.export`."""

import sys

from erl_plugin.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
