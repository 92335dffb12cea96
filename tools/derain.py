"""`erl-derain` from a checkout: see :mod:`erl_plugin.cli.derain`."""

import sys

from erl_plugin.cli.derain import main

if __name__ == "__main__":
    sys.exit(main())
