"""Shared post-training layer (PSFT, G-OPD, noisy rewards, realignment): loading causal-LM
artifacts, KV-cached rollout sampling, per-token log-probs / entropy / KL, verifiable rewards on
the arithmetic world, and the SFT and GRPO loops."""
