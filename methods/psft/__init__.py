"""PSFT: Proximal Supervised Fine-Tuning (Zhu et al., arXiv 2508.17784)."""
