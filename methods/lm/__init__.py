"""Technique layer shared by papers: tokenizer training, the tiny Llama factory and its trainer,
and the conversion of the small scale's real model (SmolLM2-135M, GGUF) into a HF folder."""
