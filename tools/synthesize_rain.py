"""`erl-synthesize-rain` from a checkout: see :mod:`erl_plugin.cli.synthesize_rain`."""

import sys

from erl_plugin.cli.synthesize_rain import main

if __name__ == "__main__":
    sys.exit(main())
