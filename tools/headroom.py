"""`erl-headroom` from a checkout: see :mod:`erl_plugin.cli.headroom`."""

import sys

from erl_plugin.cli.headroom import main

if __name__ == "__main__":
    sys.exit(main())
