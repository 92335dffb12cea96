"""`erl-leaderboard` from a checkout: see :mod:`erl_plugin.cli.leaderboard`."""

import sys

from erl_plugin.cli.leaderboard import main

if __name__ == "__main__":
    sys.exit(main())
