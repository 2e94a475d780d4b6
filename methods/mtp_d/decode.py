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

from methods.mtp_d.heads import MTPHeads


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
    """The main model over a growing left-padded batch, with its KV cache.

    Column validity and positions are preallocated for ``capacity`` columns (generated columns
    are always valid and continue each row's positions), so extending never concatenates.
    """

    def __init__(self, main: LlamaForCausalLM, ids: torch.Tensor, valid: torch.Tensor, capacity):
        self.main = main
        self.cache = DynamicCache()
        width = ids.shape[1]
        capacity = max(int(capacity), width)
        self.valid_full = torch.ones(
            (ids.shape[0], capacity), dtype=torch.bool, device=valid.device
        )
        self.valid_full[:, :width] = valid
        self.pos_full = (self.valid_full.long().cumsum(-1) - 1).clamp(min=0)
        self.n = width
        self.h, self.logits = self._forward(ids, self.pos_full[:, :width])

    @property
    def valid(self) -> torch.Tensor:
        return self.valid_full[:, : self.n]

    @property
    def pos(self) -> torch.Tensor:
        return self.pos_full[:, : self.n]

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
        start, self.n = self.n, self.n + ids.shape[1]
        if self.n > self.valid_full.shape[1]:
            raise ValueError(f"decoding past the preallocated {self.valid_full.shape[1]} columns")
        return self._forward(ids, self.pos_full[:, start : self.n])

    def keep(self, length: int) -> None:
        """Keep the first ``length`` columns (drop rejected drafts)."""
        _crop(self.cache, length)
        self.n = length


@torch.inference_mode()
def greedy_decode(
    main: LlamaForCausalLM, ids: torch.Tensor, valid: torch.Tensor, new_tokens: int
) -> torch.Tensor:
    """Plain greedy decoding with the main head: [B, new_tokens]."""
    m = _Main(main, ids, valid, ids.shape[1] + new_tokens)
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
def teacher_forced_acceptance(
    main: LlamaForCausalLM, heads: MTPHeads, windows: list[list[int]], depth: int | None = None
) -> tuple[SpecStats, SpecStats]:
    """Acceptance on fixed reference text, the teacher-forced mode (README.md, Eq. 6).

    Each window is one reference token sequence; the main model and the modules run over it
    once (head k at position i sees h^{k-1}_i and E(t_{i+k}), as in training). At every position
    i whose drafts all have a target (i + depth + 1 < T) head k is *correct* when its top-1
    equals the reference token ``t_{i+k+1}`` (first stats) and *agrees* when it equals the main
    head's top-1 at position i+k given the same reference prefix (second stats: the acceptance
    test of Algorithm 1 with the reference text standing in for the model's own continuation).
    AR_k, CAR_k and τ then follow ``SpecStats`` with positions as steps.
    """
    from methods.mtp_d.loss import run_heads

    depth = heads.depth if depth is None else depth
    if not 1 <= depth <= heads.depth:
        raise ValueError(f"draft depth {depth} must be in [1, {heads.depth}]")
    dev = next(main.parameters()).device
    ref_stats, main_stats = SpecStats(depth), SpecStats(depth)
    for w in windows:
        t = len(w)
        n = t - depth - 1  # positions i = 0..n-1 have targets for every head
        if n < 1:
            continue
        ids = torch.tensor([w], dtype=torch.long, device=dev)
        h0 = main.model(input_ids=ids).last_hidden_state
        main_top = main.lm_head(h0).argmax(-1)[0]  # main head's token after position j
        saved = heads.schedule
        heads.schedule = saved[:depth]
        try:
            logits = run_heads(main, heads, ids, h0)
        finally:
            heads.schedule = saved
        for stats, target in ((ref_stats, ids[0]), (main_stats, None)):
            prev = torch.ones(n, dtype=torch.bool, device=dev)
            run_len = torch.zeros(n, dtype=torch.long, device=dev)
            for k in range(1, depth + 1):
                top = logits[k - 1][0, :n].argmax(-1)
                want = target[k + 1 : k + 1 + n] if target is not None else main_top[k : k + n]
                ok = prev & (top == want)
                stats.attempted[k - 1] += int(prev.sum())
                stats.accepted[k - 1] += int(ok.sum())
                run_len += ok.long()
                prev = ok
            stats.steps += n
            stats.accepted_len.extend(run_len.tolist())
    return ref_stats, main_stats


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
    bsz, width = ids.shape
    # every buffer is preallocated: committed columns, then y and the drafts as scratch
    cap = width + new_tokens + depth + 1
    m = _Main(main, ids, valid, cap)
    tokens = torch.zeros((bsz, cap), dtype=torch.long, device=ids.device)
    tokens[:, :width] = ids
    h0 = m.h.new_zeros((bsz, cap, m.h.shape[-1]))  # final main hidden state per column
    h0[:, :width] = m.h
    hk = [torch.zeros_like(h0) for _ in range(depth)]  # h^k per column
    final = [0] * depth  # columns of h^k whose inputs are all committed tokens (or y)
    # module masks (query column sees valid key columns at or before it; pad columns see
    # themselves, never NaN) and rotary tables, built once for every column
    col = torch.arange(cap, device=ids.device)
    allowed = (col[None, :] <= col[:, None])[None] & m.valid_full[:, None, :]
    allowed |= torch.eye(cap, dtype=torch.bool, device=ids.device)[None]
    mask_full = torch.zeros(allowed.shape, dtype=h0.dtype, device=ids.device)
    mask_full.masked_fill_(~allowed, torch.finfo(h0.dtype).min)
    mask_full = mask_full[:, None]
    cos, sin = heads.rotary(h0, m.pos_full)
    caches = [DynamicCache() for _ in range(depth)]
    y = m.logits[:, -1].argmax(-1)
    n = width
    while n - width < new_tokens:
        # (2) draft: module k at column j sees h^{k-1}_j and E(tokens_{j+k}), predicts
        # tokens_{j+k+1}; column n holds y, columns n+1.. the drafts
        tokens[:, n] = y
        h_prev = h0
        for k in range(1, depth + 1):
            start = final[k - 1]
            h_new = heads.module_at(k)(
                h_prev[:, start:n],
                emb(tokens[:, start + k : n + k]),
                mask_full[:, :, start:n, :n],
                (cos[:, start:n], sin[:, start:n]),
                cache=caches[k - 1],
            )
            h_new = torch.where(m.valid_full[:, start:n, None], h_new, torch.zeros_like(h_new))
            hk[k - 1][:, start:n] = h_new
            final[k - 1] = n - k + 1
            _crop(caches[k - 1], final[k - 1])
            tokens[:, n + k] = heads.logits(main, k, h_new[:, -1]).argmax(-1)
            h_prev = hk[k - 1]
        drafts = tokens[:, n + 1 : n + 1 + depth]
        if trace is not None:
            trace.append((n, drafts.clone()))
        # (3) verify [y, d_1..d_K] with one main forward
        cand = tokens[:, n : n + 1 + depth]
        h_v, logits_v = m.extend(cand)
        g = logits_v.argmax(-1)  # g_i: main head's token after cand_i
        run = (drafts == g[:, :-1]).long().cumprod(dim=1)  # 1 while every earlier draft matched
        a_rows = run.sum(dim=1)
        a = int(a_rows.min())
        if stats is not None:
            stats.steps += bsz
            prev = torch.ones(bsz, dtype=torch.long, device=ids.device)
            for k in range(depth):
                stats.attempted[k] += int(prev.sum())
                stats.accepted[k] += int(run[:, k].sum())
                prev = run[:, k]
            stats.accepted_len.extend(a_rows.tolist())
        m.keep(n + a + 1)  # commit y and the accepted drafts (already in tokens)
        h0[:, n : n + a + 1] = h_v[:, : a + 1]
        y = g[:, a]
        n += a + 1
    return tokens[:, width : width + new_tokens].clone()
