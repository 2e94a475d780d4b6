"""Activation-hook layer shared by the interpretability papers (mi_steer, NSDS's efficiency use)."""
