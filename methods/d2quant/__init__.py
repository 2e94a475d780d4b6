"""D2Quant (arXiv 2602.02546): Dual-Scale Quantizer on down_proj + Deviation-Aware Correction."""
