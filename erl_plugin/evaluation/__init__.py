"""Scoring and using trained networks: evaluation (with and without clean references), tiled inference,
analysis, leaderboards, export and the Python API (the code behind ``erl-evaluate``, ``erl-derain``,
``erl-analyze``, ``erl-leaderboard`` and ``erl-export``)."""
