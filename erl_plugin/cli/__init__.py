"""The commands users run, installed as console scripts (``erl-derain``, ``erl-evaluate``, ``erl-analyze``,
``erl-leaderboard``, ``erl-create-lmdb``, ``erl-synthesize-rain``, ``erl-headroom``, ``erl-export``);
``tools/<name>.py`` in a checkout runs the same ``main``. Each returns its exit status: 0 done, 1 done with a
shortfall (skipped files, a missed ``--min-gain-db``, an export that fails its check), 2 bad input before any
work."""
