"""Evaluation suites and the deterministic data generators they read.

``benchmarks`` never imports ``methods`` (and vice versa): they meet in files.
"""
