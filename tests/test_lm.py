import torch

from methods.lm.model import build_model
from methods.lm.tokenizer import train_tokenizer
from methods.lm.train import _split_batch, lr_at, token_stream, train_lm

SPEC = {
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
}


def _train(tok, seed):
    torch.set_num_threads(1)
    stream = token_stream(["Question: What is 1 + 2?\nAnswer: 3\n"] * 50, tok)
    model = build_model(SPEC, tok, seed=seed)
    log = train_lm(
        model,
        {"a": stream},
        {"a": 1.0},
        steps=5,
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        warmup_steps=2,
        seed=seed,
    )
    return model, log


def test_training_is_deterministic_and_learns():
    tok = train_tokenizer(["Question: What is 1 + 2?\nAnswer: 3\n"] * 10, vocab_size=270)
    m1, log1 = _train(tok, 0)
    m2, log2 = _train(tok, 0)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert log1 == log2
    assert log1[-1]["loss"] < log1[0]["loss"]
    m3, _ = _train(tok, 1)
    assert not torch.equal(m1.model.embed_tokens.weight, m3.model.embed_tokens.weight)


def test_schedule_and_batch_split():
    assert lr_at(0, 100, 10, 1.0) == 0.1
    assert lr_at(10, 100, 10, 1.0) == 1.0
    assert abs(lr_at(100, 100, 10, 1.0) - 0.1) < 1e-9
    assert _split_batch(32, {"text": 0.25, "arith": 0.75}) == {"text": 8, "arith": 24}
    assert sum(_split_batch(7, {"a": 1, "b": 1, "c": 1}).values()) == 7


def test_loss_series_averages_blocks_of_steps():
    from methods.lm.train import loss_series

    log = [{"step": i, "loss": float(i), "lr": 0.1} for i in range(10)]
    s = loss_series(log, max_points=4)  # stride 10 // 4 = 2: blocks (0,1), (2,3), ...
    assert s["name"] == "train_loss" and s["x_label"] == "step"
    assert s["x"] == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert s["y"] == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert loss_series(log)["y"] == [float(i) for i in range(10)]  # short logs: every step


def test_build_tiny_writes_its_training_curve_into_a_record(tmp_path):
    """The base model's loss curve reaches the report through its own ``train`` record (the
    lm-eval suite no longer reads the artifact's train_log.jsonl)."""
    import json
    from pathlib import Path

    import yaml

    from benchmarks.data.cli import main as data_main
    from claimbench.records import load_run_record
    from methods.lm.build import main as build_main
    from methods.lm.train import loss_series
    from tests.helpers import reduced_scale

    root = Path(__file__).resolve().parents[1]
    scale_file = reduced_scale(tmp_path / "tiny-ci.yaml", root)
    data = yaml.safe_load(scale_file.read_text())
    data["data"]["arith"].update(n_train_per_family=20, n_eval_per_family=2)
    data["tokenizer"]["vocab_size"] = 270
    data["models"]["lm-s"]["train"].update(steps=6, batch_size=4, seq_len=16, warmup_steps=2)
    scale_file.write_text(yaml.safe_dump(data))
    job = ["--scale", "tiny", "--scale-file", str(scale_file), "--paper", "base"]
    arith = tmp_path / "data" / "arith"
    data_main(["arith", *job, "--variant", "arith", "--out", str(arith)])
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(f"To be or not to be, {i} times." for i in range(40)))
    inputs = ["--text", str(text), "--arith", str(arith / "train.jsonl")]
    tok = tmp_path / "art" / "tokenizer"
    build_main(["tokenizer", *job, "--variant", "tokenizer", "--out", str(tok), *inputs])
    art, rec = tmp_path / "art" / "lm-s", tmp_path / "runs" / "lm-s" / "train.json"
    build_main(
        ["tiny", *job, "--variant", "lm-s", "--out", str(art), "--tokenizer", str(tok)]
        + [*inputs, "--record", str(rec)]
    )
    record = load_run_record(rec)
    meta = json.loads((art / "meta.json").read_text())
    log = [json.loads(line) for line in (art / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 6
    assert (record["suite"], record["paper"], record["method"]) == ("train", "base", "base")
    assert (record["variant"], record["base_model"], record["scale"]) == ("lm-s", "lm-s", "tiny")
    assert record["series"] == [loss_series(log)]
    assert record["series"][0]["y"] == [r["loss"] for r in log]
    [final] = record["metrics"]
    assert (final["task"], final["metric"], final["higher_is_better"]) == (
        "train",
        "final_loss",
        False,
    )
    assert final["value"] == meta["final_loss"] == log[-1]["loss"]  # tail of 6 steps: the last
    assert record["config"]["spec"] == meta["spec"]
