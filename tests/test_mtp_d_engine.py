"""MTP-D's paper-scale trainer (methods/mtp_d/engine.py) on micro models in the real architecture
(LlamaForCausalLM + chained MTP modules): it trains exactly what the one-process loop trains,
gradient accumulation gives the update of the full batch, two processes (gloo) give the update
of one, and a run stopped after a checkpoint resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from claimbench import checkpoint
from claimbench.errors import ConfigError
from methods.lm.train import train_lm
from methods.mtp_d.engine import make_accelerator, micro_batches, train_engine
from methods.mtp_d.heads import MTPHeads
from methods.mtp_d.loss import MTPLM, MTPLoss, freeze_for_extension

ROOT = Path(__file__).resolve().parent.parent
V = 48
LOSS = {
    "mtp_lambda": 0.3,
    "beta": 1.0,
    "top_n": 12,
    "kl_direction": "forward",
    "temperature": 1.0,
}
TRAIN = {
    "steps": 4,
    "batch_size": 8,
    "seq_len": 16,
    "lr": 3e-3,
    "warmup_steps": 1,
    "weight_decay": 0.1,
    "arith_fraction": 0.5,
}


# Weights after two AdamW steps, compared across micro-batching or processes: the same maths in
# another float32 summation order. AdamW's m/sqrt(v) magnifies that order on near-zero gradients:
# measured 2.2e-6 at most (1 weight of 44,512) on an AVX512 CPU, below 2e-6 on an AVX2 one. The
# negative control, the same accumulation over another batch order, is ~1.2e-2 away (nearly every
# weight beyond 1e-5); two steps move a weight by at most 2 * lr = 6e-3.
ATOL = 1e-5


def micro_model(frozen_trunk: bool = False, seed: int = 0) -> MTPLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    main = LlamaForCausalLM(cfg)
    heads = MTPHeads(main.config, 2)
    model = MTPLM(main, heads, MTPLoss.from_config(LOSS, 2, V))
    if frozen_trunk:  # heads on a frozen (pretrained) trunk: every module trains, the trunk not
        freeze_for_extension(model, 0)
    return model


def streams(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, V, (400,), generator=gen) for k in ("text", "arith")}


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in model.parameters()])


def run_engine(model, train=TRAIN, **kw):
    acc = make_accelerator(cpu=True)
    return train_engine(model, streams(), train, seed=3, desc="t", accelerator=acc, **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_engine_without_accumulation_is_the_one_process_loop():
    ref = micro_model()
    start = flat(ref)
    train_lm(
        ref,
        streams(),
        {"text": 0.5, "arith": 0.5},
        steps=TRAIN["steps"],
        batch_size=8,
        seq_len=16,
        lr=TRAIN["lr"],
        weight_decay=0.1,
        warmup_steps=1,
        seed=3,
    )
    ref_losses = [r["main_ce"] for r in ref.history]
    model = micro_model()
    log, meta = run_engine(model)
    assert torch.allclose(flat(model), flat(ref), atol=1e-6, rtol=0)
    assert not torch.allclose(flat(model), start)  # it trained
    assert [round(r["main_ce"], 5) for r in log] == [round(x, 5) for x in ref_losses]
    assert meta["segments"][0]["start_step"] == 0 and meta["segments"][0]["end_step"] == 4


@pytest.mark.parametrize("frozen_trunk", [False, True])
def test_accumulation_gives_the_full_batch_update(frozen_trunk):
    full = micro_model(frozen_trunk)
    log_full, _ = run_engine(full, {**TRAIN, "steps": 2})
    acc = micro_model(frozen_trunk)
    log_acc, _ = run_engine(acc, {**TRAIN, "steps": 2, "micro_batch_size": 2})  # 4 micro-batches
    assert torch.allclose(flat(acc), flat(full), atol=ATOL, rtol=0)
    for a, b in zip(log_acc, log_full, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["kl_1"] - b["kl_1"]) < 1e-5
    if frozen_trunk:  # the trunk never moves
        fresh = micro_model(frozen_trunk)
        for p, q in zip(acc.main.parameters(), fresh.main.parameters(), strict=True):
            assert torch.equal(p, q)
    # the tolerance can fail: the same accumulation over another batch order is far off
    wrong = micro_model(frozen_trunk)
    train_engine(
        wrong,
        streams(),
        {**TRAIN, "steps": 2, "micro_batch_size": 2},
        seed=4,  # another batch order
        desc="t",
        accelerator=make_accelerator(cpu=True),
    )
    assert not torch.allclose(flat(wrong), flat(full), atol=ATOL, rtol=0)


def test_micro_batch_must_divide_the_batch():
    with pytest.raises(ConfigError, match=r"micro_batch_size: 3 x 2 processes .* batch_size 8"):
        micro_batches(8, 3, 2, "papers.mtp_d.train")
    assert micro_batches(1024, 4, 8, "x") == 32


class Stop(Exception):
    pass


def test_a_run_stopped_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    train = {**TRAIN, "steps": 5, "micro_batch_size": 4}
    whole = micro_model()
    log_whole, _ = run_engine(whole, train)

    def kill_at_3(done):
        if done == 3:  # after the checkpoint at step 2, before the one at 4
            raise Stop

    first = micro_model()
    with pytest.raises(Stop):
        run_engine(first, train, ckpt_dir=tmp_path, checkpoint_every=2, on_step=kill_at_3)
    assert checkpoint.latest(tmp_path)[0] == 2
    again = micro_model(seed=9)  # another init: the weights come from the checkpoint
    log, meta = run_engine(again, train, ckpt_dir=tmp_path, checkpoint_every=2)
    assert torch.allclose(flat(again), flat(whole), atol=1e-6, rtol=0)
    assert [r["step"] for r in log] == list(range(5))
    assert [round(r["loss"], 5) for r in log] == [round(r["loss"], 5) for r in log_whole]
    segs = [(s["start_step"], s["end_step"]) for s in meta["segments"]]
    assert segs == [(0, 2), (2, 5)]
    # and it can fail: without the checkpoint the rerun starts from its own init
    fresh = micro_model(seed=9)
    run_engine(fresh, train)
    assert not torch.allclose(flat(fresh), flat(whole), atol=1e-3, rtol=0)


WORKER = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.test_mtp_d_engine import micro_model, run_engine, flat, TRAIN
torch.set_num_threads(1)
model = micro_model()
log, _ = run_engine(model, {{**TRAIN, "steps": 2, "micro_batch_size": 2}})
import torch.distributed as dist
if dist.get_rank() == 0:
    torch.save({{"w": flat(model), "loss": [r["loss"] for r in log]}}, {out!r})
"""


def test_two_processes_give_the_update_of_one(tmp_path):
    one = micro_model()
    log_one, _ = run_engine(one, {**TRAIN, "steps": 2})
    script = tmp_path / "worker.py"
    out = tmp_path / "two.pt"
    script.write_text(WORKER.format(root=str(ROOT), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc = subprocess.run(
        [*torchrun, "--nproc_per_node", "2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out, weights_only=True)
    assert torch.allclose(two["w"], flat(one), atol=ATOL, rtol=0)
    assert [round(x, 5) for x in two["loss"]] == [round(r["loss"], 5) for r in log_one]


def test_build_through_the_engine_writes_the_same_artifact(tmp_path):
    """``python -m methods.mtp_d.build`` with ``papers.mtp_d.engine`` (4 micro-batches of 1):
    the same weights as the one-process loop, the segments and engine settings in meta.json,
    no checkpoints left behind; the looped extension through it keeps the trunk bit-equal."""
    import json

    from safetensors.torch import load_file

    from methods.lm.tokenizer import save_tokenizer, train_tokenizer
    from methods.mtp_d import build
    from tests.posttrain_fixtures import scale_file

    (tmp_path / "arith").mkdir()
    probs = [
        {"prompt": f"What is {i} + {i + 1}?", "short": str(2 * i + 1), "long": f"{2 * i + 1}."}
        for i in range(30)
    ]
    (tmp_path / "arith" / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probs))
    text = "\n\n".join(f"To be or not to be, line {i}, that is the question." for i in range(60))
    (tmp_path / "train.txt").write_text(text)
    tok_dir = tmp_path / "tok"
    save_tokenizer(train_tokenizer(text.split("\n\n"), 300), tok_dir)
    spec = {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    train = {"steps": 3, "batch_size": 4, "seq_len": 16, "lr": 0.01, "warmup_steps": 1}
    section = {
        "architecture": spec,
        "heads": 2,
        "tie_embeddings": False,
        "train": train,
        "loss": {"mtp_lambda": 0.3, "beta": 1.0, "top_n_fraction": 0.08},
        "variants": ["ntp", "mtp", "mtp_d"],
        "loop": {"sources": ["mtp_d"], "factors": [2], "train": train},
        "speculative": {"n_prompts": 4, "new_tokens": 6, "batch_sizes": [1], "repeats": 1},
    }
    common = ["--tokenizer", str(tok_dir), "--text", str(tmp_path / "train.txt")]
    common += ["--arith", str(tmp_path / "arith" / "train.jsonl"), "--variant", "mtp_d"]
    out = {}
    for name, extra in (
        ("loop", {}),
        (
            "engine",
            {
                "engine": {"checkpoint_every": 2},
                "train": {**train, "micro_batch_size": 1},
                "loop": {**section["loop"], "train": {**train, "micro_batch_size": 2}},
            },
        ),
    ):
        sf = scale_file(tmp_path / f"{name}.yaml", "mtp_d", {**section, **extra})
        job = ["--scale", "tiny", "--paper", "mtp_d", "--scale-file", str(sf)]
        out[name] = tmp_path / name
        build.main(["train", *job, "--out", str(out[name]), *common])
    a = load_file(out["loop"] / "model.safetensors")
    b = load_file(out["engine"] / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    meta = json.loads((out["engine"] / "meta.json").read_text())
    assert [(s["start_step"], s["end_step"]) for s in meta["segments"]] == [(0, 3)]
    assert meta["engine"]["accumulation"] == 4 and meta["engine"]["processes"] == 1
    assert not Path(meta["engine"]["checkpoints"]).exists()
    assert "engine" not in json.loads((out["loop"] / "meta.json").read_text())
    build.main(
        ["extend", *job, "--source", str(out["engine"]), "--factor", "2"]
        + ["--out", str(tmp_path / "loop4"), *common]
    )
    loop = json.loads((tmp_path / "loop4" / "meta.json").read_text())
    assert loop["main_weights_sha256"] == loop["source_main_weights_sha256"]
    assert loop["heads"] == 4 and loop["engine"]["accumulation"] == 2


def test_heads_on_a_frozen_pretrained_trunk(tmp_path):
    """``papers.mtp_d.trunk``: ntp is the trunk itself, mtp_d trains only the modules (the trunk
    comes out bit-equal), and the stop-gradient ablation is refused in one line."""
    import json

    import yaml
    from safetensors.torch import load_file

    from claimbench.config import CONFIG_DIR
    from claimbench.micro import CORPUS, micro_lm
    from methods.mtp_d import build

    trunk = micro_lm(tmp_path / "trunk", arch="llama")
    (tmp_path / "arith.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1=", "short": str(i + 1), "long": "x"}) + "\n"
            for i in range(20)
        )
    )
    (tmp_path / "train.txt").write_text("\n\n".join(CORPUS[:200]))
    data = yaml.safe_load((CONFIG_DIR / "scales" / "tiny.yaml").read_text())
    section = {k: v for k, v in data["papers"]["mtp_d"].items() if k != "architecture"}
    train = {"steps": 3, "batch_size": 4, "seq_len": 16, "lr": 0.01, "warmup_steps": 1}
    section.update(trunk="trunk", heads=2, train=train, variants=["ntp", "mtp", "mtp_d"])
    section.pop("loop", None)
    section.pop("reuse", None)
    data["papers"] = {"mtp_d": section}
    data["models"]["trunk"] = {"kind": "local", "path": str(trunk)}
    sf = tmp_path / "scale.yaml"
    sf.write_text(yaml.safe_dump(data, sort_keys=False))
    common = ["--scale", "tiny", "--paper", "mtp_d", "--scale-file", str(sf), "--trunk", str(trunk)]
    common += ["--tokenizer", str(trunk), "--text", str(tmp_path / "train.txt")]
    common += ["--arith", str(tmp_path / "arith.jsonl")]
    for v in ("ntp", "mtp_d"):
        build.main(["train", *common, "--variant", v, "--out", str(tmp_path / v)])
    ref = load_file(trunk / "model.safetensors")
    for v in ("ntp", "mtp_d"):
        got = load_file(tmp_path / v / "model.safetensors")
        assert all(torch.equal(ref[k], got[k]) for k in ref), v
    meta = json.loads((tmp_path / "mtp_d" / "meta.json").read_text())
    assert meta["heads"] == 2 and meta["base_model"] == "trunk"
    assert meta["trainable"] and all(t.startswith("mods.") for t in meta["trainable"])
    log = [json.loads(x) for x in (tmp_path / "mtp_d" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and "kl_1" in log[0]
    assert (tmp_path / "mtp_d" / "mtp_heads").is_dir()
    assert not (tmp_path / "ntp" / "mtp_heads").exists()
    with pytest.raises(SystemExit) as e:
        build.main(["train", *common, "--variant", "mtp_d_nosg", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


@pytest.mark.slow
def test_gpu_smoke_area_runs_on_cpu(tmp_path):
    """``make gpu-smoke`` area mtp_d (methods/mtp_d/smoke.py) on the CPU in bf16: the engine run
    on a micro trunk and the lossless speed measurement, one line each."""
    from methods.mtp_d.smoke import gpu_smoke

    lines = gpu_smoke("cpu", "bfloat16", tmp_path)
    assert (
        len(lines) == 2 and "trunk bit-equal" in lines[0] and "tokens equal to greedy" in lines[1]
    )


def test_several_processes_without_the_engine_are_refused(tmp_path, monkeypatch, capsys):
    from methods.mtp_d import build

    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["train", "--scale", "tiny", "--paper", "mtp_d", "--variant", "mtp"]
    args += ["--out", str(tmp_path / "o"), "--tokenizer", "x", "--text", "x", "--arith", "x"]
    with pytest.raises(SystemExit) as e:
        build.main(args)
    assert e.value.code == 2
    assert "papers.mtp_d.engine: missing" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the tiny loop goes on (and fails later)
    with pytest.raises(SystemExit) as e:
        build.main(args)
    assert "papers.mtp_d.engine" not in capsys.readouterr().err
