"""Character-level vocabulary of the tiny MI worlds: four marker tokens, newline, printable ASCII."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

SPECIALS = ("<eos>", "<U>", "<L>", "<REFUSE>")
_SPLIT = re.compile("|".join(re.escape(s) for s in SPECIALS) + r"|.", re.S)


class CharVocab:
    """Encodes ``"<U>say 1:"`` as [<U>, s, a, y, ' ', 1, :]; characters outside the set are dropped."""

    def __init__(self) -> None:
        self.tokens = list(SPECIALS) + ["\n"] + [chr(c) for c in range(32, 127)]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.eos_token_id = self.bos_token_id = self.pad_token_id = self.index["<eos>"]

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.index[t] for t in _SPLIT.findall(text) if t in self.index]

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)

    def id(self, token: str) -> int:
        return self.index[token]

    def batch(self, texts: list[str]) -> torch.Tensor:
        """Equal-length texts as one (B, T) tensor; unequal lengths are an error naming them."""
        if not texts:
            raise ValueError("empty prompt set: at least one prompt is needed")
        ids = [self.encode(t) for t in texts]
        lengths = sorted({len(i) for i in ids})
        if len(lengths) > 1:
            i = next(k for k, x in enumerate(ids) if len(x) != len(ids[0]))
            raise ValueError(
                f"prompts must have equal token lengths here, got lengths {lengths}: "
                f"{texts[0]!r} has {len(ids[0])} tokens, {texts[i]!r} has {len(ids[i])}"
            )
        return torch.tensor(ids, dtype=torch.long)

    def save(self, out: str | Path) -> None:
        Path(out, "vocab.json").write_text(json.dumps({"tokens": self.tokens}, indent=0))
