"""G-OPD / ExOPD: generalized on-policy distillation with reward extrapolation (Yang et al.,
arXiv 2602.12125)."""
