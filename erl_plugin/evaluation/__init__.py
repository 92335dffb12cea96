"""Scoring trained networks: evaluation, tiled inference, analysis and leaderboards (the code behind
``tools/evaluate.py``, ``derain.py``, ``analyze.py`` and ``leaderboard.py``)."""
