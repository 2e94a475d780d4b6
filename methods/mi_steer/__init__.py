"""Locate, Steer, and Improve (arXiv 2601.14004): actionable mechanistic interpretability."""
