"""Shared weight-only quantization layer (NSDS and D2Quant): asymmetric group-wise RTN and GPTQ,
per-module bit plans, compressed-tensors pack-quantized storage and an exact loader."""
