"""claimbench: configs -> artifacts -> run records -> DuckDB store -> HTML leaderboards.

The core package imports neither ``methods`` nor ``benchmarks`` (README: Layout).
"""

__version__ = "0.1.0"

# Bumped whenever the run-record contract or the way metrics are computed changes, so that the
# leaderboard can refuse to compare rows produced by different harness versions.
HARNESS_VERSION = "1"
