"""Rollouts through a vLLM server with TRL's client (``engine: {rollouts: vllm}``).

NOT EXERCISED ON THESE MACHINES: vLLM cannot be installed next to this project's transformers
pin, so this branch is covered by the paper-scale dry runs and by the refusal test only
(``Engine`` raises when ``rollouts: vllm`` and vLLM is absent). The generation and the weight
transport are TRL's own code (``trl.generation.vllm_client.VLLMClient``: ``generate``,
``init_communicator``, ``update_named_param``, ``reset_prefix_cache``; a server started with
``vllm serve <model> --weight-transfer-config '{"backend": "nccl"}'`` as TRL's vLLM guide says);
what is ours is the layout of the result as the loops' ``Rollouts`` (prompt + completion ids,
loss mask on the completion, texts, truncation flags) and, under ZeRO-3, gathering each
parameter before it is sent.
"""

from __future__ import annotations

import os

from methods.posttrain.sampling import Rollouts
from methods.posttrain.tokens import pad_rows


class VLLMRollouts:
    def __init__(self, engine, base_url: str | None = None):
        from trl.generation.vllm_client import VLLMClient

        self.engine = engine
        self.client = None
        if engine.is_main:
            url = base_url or os.environ.get("VLLM_BASE_URL", "http://localhost:8000")
            self.client = VLLMClient(base_url=url, connection_timeout=600.0)
            self.client.init_communicator(device=engine.device)

    def sample(self, tok, prompts, *, n, max_new_tokens, temperature, seed, stop_ids) -> Rollouts:
        """``n`` completions per prompt, group-contiguous, identical on every process."""
        from accelerate.utils import broadcast_object_list

        out = [None]
        if self.client is not None:
            out[0] = self.client.generate(
                prompts,
                n=n,
                temperature=temperature,
                max_tokens=max_new_tokens,
                logprobs=None,
                generation_kwargs={"seed": seed, "stop_token_ids": list(stop_ids)},
            )
        out = broadcast_object_list(out)[0]
        return layout(tok, out, len(prompts), n, max_new_tokens, stop_ids)

    def sync(self, model) -> None:
        """Send the policy's current weights to the server (after each optimiser step)."""
        acc = self.engine.accelerator
        unwrapped = acc.unwrap_model(model)
        zero3 = (
            self.engine._deepspeed() and getattr(acc.state.deepspeed_plugin, "zero_stage", 0) == 3
        )
        for name, p in unwrapped.named_parameters():
            if zero3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([p]):
                    if self.client is not None:
                        self.client.update_named_param(name, p.data)
            elif self.client is not None:
                self.client.update_named_param(name, p.data)
        if self.client is not None:
            self.client.reset_prefix_cache()
        acc.wait_for_everyone()


def layout(tok, out: dict, n_prompts: int, n: int, max_new: int, stop_ids) -> Rollouts:
    """TRL's ``generate`` result as ``Rollouts``: right-padded prompt + completion rows with the
    completion (stop token included) in the loss mask."""
    prompt_ids, comp = out["prompt_ids"], out["completion_ids"]
    if len(prompt_ids) == n_prompts and len(comp) == n_prompts * n:
        prompt_ids = [p for p in prompt_ids for _ in range(n)]
    if len(prompt_ids) != len(comp) or len(comp) != n_prompts * n:
        raise ValueError(f"vLLM returned {len(comp)} completions for {n_prompts} x {n}")
    stops = set(stop_ids)
    rows, masks, texts, trunc = [], [], [], []
    for p, c in zip(prompt_ids, comp, strict=True):
        ended = bool(c) and c[-1] in stops
        rows.append(list(p) + list(c))
        masks.append([0] * len(p) + [1] * len(c))
        texts.append(tok.decode(c[:-1] if ended else c, skip_special_tokens=True))
        trunc.append(not ended and len(c) >= max_new)
    batch = pad_rows(rows, masks, tok.pad_token_id)
    index = [i for i in range(n_prompts) for _ in range(n)]
    return Rollouts(batch=batch, texts=texts, truncated=trunc, prompt_index=index)
