"""Text-video retrieval suite: loaders for MSR-VTT formats, R@K / MdR / MnR, run records."""
