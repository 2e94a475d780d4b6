"""Allocation study (README, "Study"), in one process on one model:

- oracle sensitivity: for each layer l, quantize only layer l to the low precision (every other
  layer at the high one) and measure the held-out perplexity increase over all-high;
- every method's allocation at every budget, quantized in memory, its held-out perplexity;
- ``n_random`` random allocations (median), and each method's Spearman correlation with the oracle.

Quantization is the shared layer's asymmetric group-wise RTN (``methods.quant.quantizer.rtn``),
the same quantizer the real artifacts use; each (module, bits) is quantized once and cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from claimbench.stats import spearman
from methods.nsds.allocate import layer_bits, uniform_bits
from methods.nsds.scores import PROJECTIONS, decoder_layers


class FakeQuant:
    """Swap decoder Linear weights between the original and cached RTN-quantized copies.

    The model's own weight tensors are overwritten in place (``copy_``) and only where a
    module's width changes; the original and quantized copies are kept on the CPU, in the
    model's dtype, so the accelerator holds one model (paper scale: a 7B model in bf16 on the
    GPU, the three copies in host memory). RTN runs on the weight's device."""

    def __init__(self, model, group_size: int):
        from methods.quant.quantizer import check_group_size, rtn

        self._rtn = rtn
        self.model = model
        self.group_size = group_size
        self.modules = {
            (i, p): layer.get_submodule(p)
            for i, layer in enumerate(decoder_layers(model))
            for p in PROJECTIONS
        }
        for (i, p), m in self.modules.items():
            check_group_size(m.weight.shape[1], group_size, where=f"model.layers.{i}.{p}")
        self.original = {k: m.weight.detach().to("cpu", copy=True) for k, m in self.modules.items()}
        self.current = {k: 16 for k in self.modules}
        self.cache: dict[tuple, torch.Tensor] = {}

    def weight(self, key, bits: int) -> torch.Tensor:
        if bits >= 16:
            return self.original[key]
        ck = (*key, bits)
        if ck not in self.cache:
            w = self.modules[key].weight
            q = self._rtn(self.original[key].to(w.device), bits, self.group_size)
            self.cache[ck] = q.dequantize().to(w.dtype).cpu()
        return self.cache[ck]

    @torch.no_grad()
    def apply(self, bits_per_layer: list[int]) -> None:
        for (i, p), m in self.modules.items():
            bits = min(bits_per_layer[i], 16)
            if self.current[(i, p)] != bits:
                m.weight.data.copy_(self.weight((i, p), bits))
                self.current[(i, p)] = bits

    def restore(self) -> None:
        self.apply([16] * (max(i for i, _ in self.modules) + 1))


class PlanLog:
    """Per-plan window NLLs, kept in memory and appended to a JSONL checkpoint as they are measured.

    A study that dies (a crash, a killed job, a node's time limit) resumes from the plans already
    on disk: the first line holds a fingerprint of the model weights, the windows and the
    quantizer settings, and a checkpoint with another fingerprint is discarded, never reused.
    JSON floats round-trip float64 exactly, so a resumed study gives the same numbers.
    """

    def __init__(self, path: Path | None, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.nll: dict[tuple[int, ...], np.ndarray] = {}
        self.resumed = 0
        if path is None:
            return
        if path.exists():
            lines = path.read_text().splitlines()
            try:
                head = json.loads(lines[0]) if lines else {}
            except json.JSONDecodeError:
                head = {}
            if head.get("fingerprint") == fingerprint:
                for line in lines[1:]:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by the crash
                        break
                    self.nll[tuple(row["bits"])] = np.asarray(row["nll"], dtype=np.float64)
                self.resumed = len(self.nll)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:  # rewrite: the header and the complete lines only
            f.write(json.dumps({"fingerprint": fingerprint}) + "\n")
            for bits, nll in self.nll.items():
                f.write(json.dumps({"bits": list(bits), "nll": nll.tolist()}) + "\n")

    def get(self, bits) -> np.ndarray | None:
        return self.nll.get(tuple(int(b) for b in bits))

    def put(self, bits, nll: np.ndarray) -> None:
        key = tuple(int(b) for b in bits)
        self.nll[key] = nll
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"bits": list(key), "nll": nll.tolist()}) + "\n")
                f.flush()
                os.fsync(f.fileno())


def fingerprint(model, windows: torch.Tensor, group_size: int, low: int, high: int) -> str:
    """Hash of what a plan's NLL depends on: the model's weights (raw bytes, any dtype), the
    held-out windows and the quantizer settings."""
    h = hashlib.sha256(json.dumps([group_size, low, high, "rtn"]).encode())
    h.update(windows.detach().cpu().numpy().tobytes())
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """Mean next-token NLL of each window."""
    out = []
    for s in range(0, len(windows), batch_size):
        ids = windows[s : s + batch_size]
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        out.append(nll.reshape(ids.shape[0], -1).mean(1).double())
    return torch.cat(out).cpu().numpy()


def ppl(nll: np.ndarray) -> float:
    return float(math.exp(float(np.mean(nll))))


def run_study(
    model,
    windows: torch.Tensor,
    scores: dict[str, list[float]],
    budgets: list[float],
    group_size: int,
    n_random: int,
    seed: int,
    low: int = 2,
    high: int = 4,
    checkpoint: Path | None = None,
) -> dict:
    """All measurements of the study (plain dict, JSON-ready).

    With ``checkpoint``, each measured plan is appended there and a rerun resumes from it
    (see ``PlanLog``); the caller removes it once the results are written.
    """
    fq = FakeQuant(model, group_size)
    log = PlanLog(checkpoint, fingerprint(model, windows, group_size, low, high))
    n_layers = len(decoder_layers(model))
    res: dict = {"n_layers": n_layers, "n_windows": int(len(windows))}

    def uniform_ok(b) -> bool:
        return float(b) == int(b) and low <= b <= high

    # one bar over every plan measured: fp, all-high, all-low, the L single-layer oracle plans,
    # then per budget each method, uniform (integer budgets), the random draws and the oracle
    n_plans = 3 + n_layers + sum(len(scores) + n_random + 1 + uniform_ok(b) for b in budgets)
    bar = tqdm(total=n_plans, desc="study", unit="plan", mininterval=5.0)
    if log.resumed:
        bar.write(f"study: resuming, {log.resumed} plans already measured in {checkpoint}")

    def measure(bits):
        nll = log.get(bits)
        if nll is None:  # a plan met twice (two methods agree) is measured once
            fq.apply(bits)
            nll = window_nll(model, windows)
            log.put(bits, nll)
        bar.update()
        return nll

    try:
        base_nll = measure([16] * n_layers)
        res["fp_ppl"] = ppl(base_nll)
        high_nll = measure([high] * n_layers)
        res["all_high_ppl"] = ppl(high_nll)
        res["all_low_ppl"] = ppl(measure([low] * n_layers))
        damage = []
        for layer in range(n_layers):
            bits = [high] * n_layers
            bits[layer] = low
            damage.append(ppl(measure(bits)) - res["all_high_ppl"])
        res["oracle_damage"] = damage
        res["spearman"] = {m: spearman(s, damage) for m, s in scores.items()}
        res["alloc"] = {}
        res["window_nll"] = {"fp": base_nll.tolist()}
        rng_seeds = [seed + 1000 + k for k in range(n_random)]
        for b in budgets:
            key = f"{b:g}"
            row: dict = {}
            for m, s in scores.items():
                bits = layer_bits(s, b, low, high)
                nll = measure(bits)
                row[m] = {"ppl": ppl(nll), "bits": bits, "avg_bits": float(np.mean(bits))}
                res["window_nll"][f"{m}@{key}"] = nll.tolist()
            if uniform_ok(b):
                bits = uniform_bits(n_layers, b)
                row["uniform"] = {"ppl": ppl(measure(bits)), "bits": bits, "avg_bits": float(b)}
            rand = []
            for rs in rng_seeds:
                order = np.random.default_rng(rs).permutation(n_layers).astype(float)
                rand.append(ppl(measure(layer_bits(order, b, low, high))))
            row["random_all"] = rand
            # the best allocation found by the oracle ranking (greedy on single-layer damage)
            bits = layer_bits(damage, b, low, high)
            row["oracle"] = {
                "ppl": ppl(measure(bits)),
                "bits": bits,
                "avg_bits": float(np.mean(bits)),
            }
            res["alloc"][key] = row
    finally:  # a failed study leaves the caller's model as it found it
        bar.close()
        fq.restore()
    return res
