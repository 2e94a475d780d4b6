"""``make gpu-smoke`` area ``mtp_d``: the paper-scale MTP-D path on one device in about a minute.

1. Heads on a pretrained trunk through the engine (``python -m methods.mtp_d.build train`` with
   ``papers.mtp_d.trunk`` and ``engine``): a micro Llama stand-in (``claimbench.micro``) as the
   trunk, 4 micro-batches per step (gradient accumulation), autocast in the job's dtype, one
   checkpoint; the trunk must come out bit-equal and the loss must fall.
2. Self-speculative decoding speed on the device: a Llama trunk of 8 x 512 trained on a
   learnable world (arithmetic progressions mod 64) and 3 heads distilled into it with the
   trunk frozen (acceptance near its maximum: the machinery's best case), then plain greedy vs
   lossless speculative decoding at batch 1 (median of 3 timed runs, CUDA synchronised):
   tokens/s of both, the speedup, tau and the share of tokens equal to greedy (all of them in
   float32; bf16 rounding can flip a near-tie).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _engine_step(device: str, dtype: str, workdir: Path) -> str:
    import torch
    import yaml
    from safetensors.torch import load_file

    from claimbench.config import CONFIG_DIR
    from claimbench.micro import CORPUS, micro_lm
    from methods.mtp_d import build

    trunk = micro_lm(workdir / "trunk", arch="llama")
    (workdir / "arith").mkdir(exist_ok=True)
    probs = [
        {"prompt": f"What is {i} + 1?", "short": str(i + 1), "long": f"{i + 1}."} for i in range(50)
    ]
    (workdir / "arith" / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probs))
    (workdir / "train.txt").write_text("\n\n".join(CORPUS))
    train = {"steps": 6, "batch_size": 8, "seq_len": 32, "lr": 0.003, "warmup_steps": 1}
    section = {
        "trunk": "trunk",
        "heads": 2,
        "train": {**train, "micro_batch_size": 2},
        "engine": {"checkpoint_every": 3},
        "loss": {"mtp_lambda": 0.3, "beta": 1.0, "top_n_fraction": 0.08},
        "variants": ["ntp", "mtp", "mtp_d"],
        "speculative": {"n_prompts": 4, "new_tokens": 6, "batch_sizes": [1], "repeats": 1},
    }
    data = yaml.safe_load((CONFIG_DIR / "scales" / "tiny.yaml").read_text())
    data["papers"] = {"mtp_d": {**data["papers"]["mtp_d"], **section}}
    data["papers"]["mtp_d"].pop("architecture", None)
    data["models"]["trunk"] = {"kind": "local", "path": str(trunk)}
    sf = workdir / "scale.yaml"
    sf.write_text(yaml.safe_dump(data, sort_keys=False))
    out = workdir / "mtp_d"
    start = time.perf_counter()
    build.main(
        ["train", "--scale", "tiny", "--paper", "mtp_d", "--scale-file", str(sf)]
        + ["--device", device, "--dtype", dtype, "--variant", "mtp_d", "--out", str(out)]
        + ["--tokenizer", str(trunk), "--text", str(workdir / "train.txt"), "--trunk", str(trunk)]
        + ["--arith", str(workdir / "arith" / "train.jsonl")]
    )
    secs = time.perf_counter() - start
    meta = json.loads((out / "meta.json").read_text())
    before, after = load_file(trunk / "model.safetensors"), load_file(out / "model.safetensors")
    moved = [k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))]
    if moved:
        raise AssertionError(f"mtp_d engine: the frozen trunk changed: {moved[:3]}")
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    if not log[-1]["loss"] < log[0]["loss"]:
        raise AssertionError(
            f"mtp_d engine: loss did not fall: {log[0]['loss']} -> {log[-1]['loss']}"
        )
    eng = meta["engine"]
    return (
        f"mtp_d engine: heads on a frozen micro trunk, {len(log)} steps x {eng['accumulation']} "
        f"micro-batches, {eng['mixed_precision']}, loss {log[0]['loss']:.3f} -> "
        f"{log[-1]['loss']:.3f}, trunk bit-equal, {secs:.1f} s"
    )


def _speed(device: str, dtype: str, new_tokens: int = 128) -> str:
    """Greedy vs speculative tokens/s at batch 1 on ``device`` (heads distilled first)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from methods.mtp_d.decode import SpecStats, greedy_decode, speculative_decode
    from methods.mtp_d.heads import MTPHeads
    from methods.mtp_d.loss import MTPLM, MTPLoss

    torch.manual_seed(0)
    # on a GPU an 8 x 512 trunk; on the CPU (make gpu-smoke DEVICE=cpu) 2 x 128, a test of the path
    cuda = device.startswith("cuda")
    layers, width, steps = (8, 512, 150) if cuda else (2, 128, 80)
    vocab = 64
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=width * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    gen = torch.Generator().manual_seed(0)

    def progressions(n: int, length: int) -> torch.Tensor:
        """A learnable world: t_{i+1} = t_i + s (mod V), start and stride s in {1, 2, 3} random."""
        start = torch.randint(0, vocab, (n, 1), generator=gen)
        stride = torch.randint(1, 4, (n, 1), generator=gen)
        return ((start + stride * torch.arange(length)) % vocab).to(device)

    # the trunk learns the world, then 3 heads are distilled into the frozen trunk (MTP-D's KL)
    main = LlamaForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(main.parameters(), lr=3e-3)
    for _ in range(steps):
        x = progressions(32, 64)
        loss = main(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    main.eval()
    main.requires_grad_(False)
    heads = MTPHeads(main.config, 3).to(device)
    model = MTPLM(main, heads, MTPLoss([0.0] * 3, [1.0] * 3, top_n=vocab, train_main=False))
    opt = torch.optim.AdamW(heads.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(progressions(32, 64)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tdtype = getattr(torch, dtype)
    main.to(tdtype)
    heads.to(tdtype)
    ids = progressions(1, 16)
    valid = torch.ones_like(ids, dtype=torch.bool)
    stats = SpecStats(3)
    ref = greedy_decode(main, ids, valid, new_tokens)
    spec = speculative_decode(main, heads, ids, valid, new_tokens, stats=stats)
    # lossless up to the dtype's rounding: a verify forward over several tokens and a one-token
    # forward may round differently, so in bf16 a near-tie can flip (exact in float64: tests)
    agree = float((ref == spec).float().mean())
    times = {"greedy": [], "spec": []}
    for _ in range(3):
        for name in times:
            _sync(device)
            t0 = time.perf_counter()
            if name == "greedy":
                greedy_decode(main, ids, valid, new_tokens)
            else:
                speculative_decode(main, heads, ids, valid, new_tokens)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    g, s = statistics.median(times["greedy"]), statistics.median(times["spec"])
    if dtype == "float32" and agree < 1.0:
        raise AssertionError(f"mtp_d speculative decoding: {agree:.1%} of tokens equal greedy")
    return (
        f"mtp_d speculative: {layers}x{width} Llama + 3 heads on {device}, batch 1, "
        f"{new_tokens} tokens, {dtype}: "
        f"greedy {new_tokens / g:.0f} tok/s, speculative {new_tokens / s:.0f} tok/s, "
        f"speedup {g / s:.2f}x, tau {stats.tau():.2f}, tokens equal to greedy {agree:.1%}"
    )


def gpu_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    """The engine step and the speed measurement; one line each. Raises on a failed check."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return [_engine_step(device, dtype, workdir), _speed(device, dtype)]
