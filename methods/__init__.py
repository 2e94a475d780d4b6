"""Paper implementations (one package per paper) and shared technique layers.

``methods`` never imports ``benchmarks`` (and vice versa): they meet in files.
"""
