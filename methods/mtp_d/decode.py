"""Plain greedy decoding and main-head-constrained self-speculative decoding (the paper's Algorithm 1;
README.md, Eq. 5).

Both use the main model's KV cache and accept a left-padded batch. Speculative decoding per
step: (1) the main head's next token ``y`` is known; (2) the MTP modules are chained to draft
``d_1..d_K`` (module k fed the embedding of the previous proposal); (3) one main-model forward
over ``[y, d_1..d_K]`` verifies the drafts left to right; the accepted prefix plus ``y`` is
committed and the main head's token after it becomes the next ``y``. The output is the main
head's greedy output, token for token. In a batch every row commits the batch's minimum
accepted length, so the cache stays rectangular (and decoding stays lossless per row).

Each MTP module keeps its own KV cache over the positions whose inputs are final (committed
tokens); positions that depend on this step's drafts are recomputed and cropped every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LlamaForCausalLM

from methods.mtp_d.heads import MTPHeads, causal_mask


def _crop(cache: DynamicCache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        valid[i, width - len(p) :] = True
    return ids, valid


class _Main:
    """The main model over a growing left-padded batch, with its KV cache."""

    def __init__(self, main: LlamaForCausalLM, ids: torch.Tensor, valid: torch.Tensor):
        self.main = main
        self.cache = DynamicCache()
        self.valid = valid
        self.pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        self.h, self.logits = self._forward(ids, self.pos)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor):
        out = self.main.model(
            input_ids=ids,
            attention_mask=self.valid.long(),
            position_ids=pos,
            cache=self.cache,
            use_cache=True,
        )
        h = out.last_hidden_state
        n = ids.shape[1]
        h = torch.where(self.valid[:, -n:, None], h, torch.zeros_like(h))  # pad columns: 0
        return h, self.main.lm_head(h)

    def extend(self, ids: torch.Tensor):
        n = ids.shape[1]
        pos = self.pos[:, -1:] + torch.arange(1, n + 1, device=ids.device)
        self.valid = torch.cat([self.valid, torch.ones_like(ids, dtype=torch.bool)], dim=1)
        self.pos = torch.cat([self.pos, pos], dim=1)
        return self._forward(ids, pos)

    def keep(self, length: int) -> None:
        """Keep the first ``length`` columns (drop rejected drafts)."""
        _crop(self.cache, length)
        self.valid, self.pos = self.valid[:, :length], self.pos[:, :length]


@torch.inference_mode()
def greedy_decode(
    main: LlamaForCausalLM, ids: torch.Tensor, valid: torch.Tensor, new_tokens: int
) -> torch.Tensor:
    """Plain greedy decoding with the main head: [B, new_tokens]."""
    m = _Main(main, ids, valid)
    y = m.logits[:, -1].argmax(-1)
    out = [y]
    while len(out) < new_tokens:
        _, logits = m.extend(y[:, None])
        y = logits[:, -1].argmax(-1)
        out.append(y)
    return torch.stack(out, dim=1)


@dataclass
class SpecStats:
    """Per-head acceptance counts over verification steps (rows counted separately)."""

    depth: int
    steps: int = 0
    attempted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    accepted_len: list[int] = field(default_factory=list)  # drafts accepted per row-step

    def __post_init__(self):
        self.attempted = self.attempted or [0] * self.depth
        self.accepted = self.accepted or [0] * self.depth

    def ar(self) -> list[float]:
        """AR_k: P(head k accepted | heads 1..k-1 accepted)  (README.md, Eq. 6)."""
        return [a / t if t else 0.0 for a, t in zip(self.accepted, self.attempted, strict=True)]

    def car(self) -> list[float]:
        """CAR_k: fraction of verification steps where heads 1..k were all accepted."""
        return [a / self.steps if self.steps else 0.0 for a in self.accepted]

    def tau(self) -> float:
        """Tokens emitted per verification step: 1 + Σ_k CAR_k."""
        return 1.0 + sum(self.car())


@torch.inference_mode()
def speculative_decode(
    main: LlamaForCausalLM,
    heads: MTPHeads,
    ids: torch.Tensor,
    valid: torch.Tensor,
    new_tokens: int,
    depth: int | None = None,
    stats: SpecStats | None = None,
    trace: list | None = None,
) -> torch.Tensor:
    """Greedy draft-and-verify with the first ``depth`` draft depths of ``heads``.

    ``trace`` (optional) receives ``(committed columns, drafts [B, depth])`` per step.
    """
    depth = heads.depth if depth is None else depth
    if not 1 <= depth <= heads.depth:
        raise ValueError(f"draft depth {depth} must be in [1, {heads.depth}]")
    emb = main.get_input_embeddings()
    dev = ids.device
    m = _Main(main, ids, valid)
    tokens = ids.clone()  # committed columns (prompt, then generated)
    h0 = m.h  # final main hidden state per committed column
    y = m.logits[:, -1].argmax(-1)
    caches = [DynamicCache() for _ in range(depth)]
    h_final: list[torch.Tensor | None] = [None] * depth  # h^k over columns with final inputs
    out: list[torch.Tensor] = []
    bsz = ids.shape[0]
    while sum(t.shape[1] for t in out) < new_tokens:
        n = tokens.shape[1]
        # (2) draft: module k at column j sees h^{k-1}_j and E(ext_{j+k}), predicts ext_{j+k+1}
        ext = torch.cat([tokens, y[:, None]], dim=1)
        h_prev, drafts = h0, []
        for k in range(1, depth + 1):
            start = 0 if h_final[k - 1] is None else h_final[k - 1].shape[1]
            cols = torch.arange(start, n, device=dev).expand(bsz, -1)
            kv_cols = torch.arange(n, device=dev)
            mask = causal_mask(cols, kv_cols.expand(bsz, -1), m.valid[:, :n], h0.dtype)
            mask = mask.masked_fill(
                (cols[:, :, None] == kv_cols[None, None, :])[:, None], 0.0
            )  # pad columns attend to themselves (never NaN)
            h_new = heads.module_at(k)(
                h_prev[:, start:n],
                emb(ext[:, start + k : n + k]),
                mask,
                heads.rotary(h0, m.pos[:, start:n]),
                cache=caches[k - 1],
            )
            h_new = torch.where(m.valid[:, start:n, None], h_new, torch.zeros_like(h_new))
            h_full = h_new if h_final[k - 1] is None else torch.cat([h_final[k - 1], h_new], 1)
            keep = n - k + 1  # columns whose inputs are all committed tokens (or y)
            h_final[k - 1] = h_full[:, :keep]
            _crop(caches[k - 1], keep)
            d = heads.logits(main, k, h_new[:, -1]).argmax(-1)
            drafts.append(d)
            ext = torch.cat([ext, d[:, None]], dim=1)
            h_prev = h_full
        if trace is not None:
            trace.append((n, torch.stack(drafts, dim=1)))
        # (3) verify [y, d_1..d_K] with one main forward
        cand = torch.cat([y[:, None], torch.stack(drafts, dim=1)], dim=1)
        h_v, logits_v = m.extend(cand)
        g = logits_v.argmax(-1)  # g_i: main head's token after cand_i
        match = torch.stack(drafts, dim=1) == g[:, :-1]
        run = match.long().cumprod(dim=1)  # 1 while every earlier draft matched
        a_rows = run.sum(dim=1)
        a = int(a_rows.min())
        if stats is not None:
            stats.steps += bsz
            prev = torch.ones(bsz, dtype=torch.long, device=dev)
            for k in range(depth):
                stats.attempted[k] += int(prev.sum())
                stats.accepted[k] += int(run[:, k].sum())
                prev = run[:, k]
            stats.accepted_len.extend(a_rows.tolist())
        commit = cand[:, : a + 1]
        m.keep(n + a + 1)
        tokens = torch.cat([tokens, commit], dim=1)
        h0 = torch.cat([h0, h_v[:, : a + 1]], dim=1)
        y = g[:, a]
        out.append(commit)
    return torch.cat(out, dim=1)[:, :new_tokens]
