"""Rollouts from any causal LM with a KV cache (``model.generate(use_cache=True)``).

Prompts are left-padded for generation. With ``stop="newline"`` (tiny and small: the arithmetic
world's completions are one line) a rollout stops at EOS or at the first token whose text contains
a newline; with ``stop="eos"`` (the paper scale: long chains of thought span many lines) it stops
only at EOS or the chat template's end token, or after ``max_new_tokens``. The returned ``Batch``
is re-laid out right-padded with the completion tokens (stop token included) in ``loss_mask``.
Token ids are laid out on the CPU and moved to ``model.device`` once; the sampling seed is drawn
from a CPU generator and set with ``torch.manual_seed`` (which seeds CPU and CUDA alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.posttrain.tokens import Batch, pad_rows

# End-of-turn / end-of-text tokens of the chat templates the paper scale uses (Qwen2.5/Qwen3:
# <|im_end|>, <|endoftext|>; Llama 3: <|eot_id|>, <|end_of_text|>; DeepSeek-R1-Distill:
# <｜end▁of▁sentence｜>), used when they are single entries of the vocabulary.
END_TOKENS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "</s>",
)
STOPS = ("newline", "eos")


def end_token_ids(tok) -> list[int]:
    """EOS plus the template end tokens in the tokenizer's vocabulary (never a newline)."""
    vocab = tok.get_vocab()
    ids = {tok.eos_token_id} | {vocab[t] for t in END_TOKENS if t in vocab}
    return sorted(i for i in ids if i is not None)


def stop_token_ids(tok, stop: str = "newline") -> list[int]:
    """``newline``: EOS plus every vocabulary entry that decodes to text containing a newline;
    ``eos``: :func:`end_token_ids`."""
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
    if stop == "eos":
        return end_token_ids(tok)
    ids = {tok.eos_token_id}
    for i in range(len(tok)):
        if "\n" in tok.decode([i]):
            ids.add(i)
    return sorted(ids)


@dataclass
class Rollouts:
    batch: Batch
    texts: list[str]  # decoded completions, stop token excluded
    truncated: list[bool]  # hit max_new_tokens without a stop token
    prompt_index: list[int]  # which prompt each rollout answers


@torch.no_grad()
def sample(
    model,
    tok,
    prompts: list[str],
    *,
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    stop_ids: list[int] | None = None,
    stop: str = "newline",
) -> Rollouts:
    """``n`` completions per prompt (greedy when ``greedy``), seeded; ``stop_ids`` (when given)
    overrides the stop tokens that ``stop`` names (:func:`stop_token_ids`)."""
    if temperature <= 0 and not greedy:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    stop_ids = stop_ids if stop_ids is not None else stop_token_ids(tok, stop)
    was_training = model.training
    model.eval()
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    enc = [e for e in enc for _ in range(n)]
    index = [i for i in range(len(prompts)) for _ in range(n)]
    L = max(len(e) for e in enc)
    ids = torch.full((len(enc), L), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(enc), L), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, L - len(e) :] = torch.tensor(e)
        att[i, L - len(e) :] = 1
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    kwargs = (
        dict(do_sample=False)
        if greedy
        else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    )
    out = model.generate(
        input_ids=ids.to(model.device),
        attention_mask=att.to(model.device),
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=tok.pad_token_id,
        use_cache=True,
        **kwargs,
    )
    model.train(was_training)
    new = out[:, L:].tolist()
    stop = set(stop_ids)
    rows, masks, texts, trunc = [], [], [], []
    for e, toks in zip(enc, new, strict=True):
        comp = []
        hit = False
        for t in toks:
            comp.append(t)
            if t in stop:
                hit = True
                break
        rows.append(e + comp)
        masks.append([0] * len(e) + [1] * len(comp))
        texts.append(tok.decode(comp[:-1] if hit else comp))
        trunc.append(not hit)
    return Rollouts(pad_rows(rows, masks, tok.pad_token_id).to(model.device), texts, trunc, index)
