"""Scoring and measuring trained networks: evaluation, tiled inference, analysis, leaderboards,
benchmarks and the seeded study (the code behind ``tools/*.py``)."""
