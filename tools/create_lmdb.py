"""`erl-create-lmdb` from a checkout: see :mod:`erl_plugin.cli.create_lmdb`."""

import sys

from erl_plugin.cli.create_lmdb import main

if __name__ == "__main__":
    sys.exit(main())
