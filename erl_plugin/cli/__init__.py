"""The commands users run, installed as console scripts (``erl-derain``, ``erl-evaluate``, ``erl-analyze``,
``erl-leaderboard``, ``erl-create-lmdb``, ``erl-synthesize-rain``, ``erl-headroom``); ``tools/<name>.py`` in a
checkout runs the same ``main``. Each returns its exit status: 0 done, 1 done with a shortfall (skipped
files, a missed ``--min-gain-db``), 2 bad input before any work."""
