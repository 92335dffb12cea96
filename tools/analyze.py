"""`erl-analyze` from a checkout: see :mod:`erl_plugin.cli.analyze`."""

import sys

from erl_plugin.cli.analyze import main

if __name__ == "__main__":
    sys.exit(main())
