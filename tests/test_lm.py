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
