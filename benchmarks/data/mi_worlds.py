"""Tiny worlds with known ground truth for mechanistic interpretability (methods/mi_steer/README.md).

Files are plain text strings; special markers ``<U>``, ``<L>``, ``<REFUSE>`` and ``<eos>`` are
single tokens of the character-level vocabulary that the MI methods use.

* Task A, induction/copy (``induction.jsonl``): a random segment followed by its repetition, so
  every token of the second half is predicted by copying (``... A B ... A -> B``).
* Task B, mode-controlled text (``mode.jsonl``): ``[<U>|<L>]say 417: <words>``; the mode token
  decides upper- vs lower-case letters; 30 % of sequences have no mode token and then each
  sequence is upper or lower case with probability 1/2 (the model must pick a default).
* Task C, planted trigger (``trigger.jsonl``): ``ask <w1> <w2> <w3>?`` is answered ``<REFUSE>``
  when any word is a trigger word, else ``ok <w1>``. Evaluation prompts are disjoint from the
  training prompts.
* Neutral text (``neutral_{train,test}.txt``): ASCII paragraphs of ``pydoc_data.topics`` (shipped
  with Python), split by topic, for side-effect KL/perplexity.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

from claimbench.job import Job, job_parser, run_job

INDUCTION_ALPHABET = string.ascii_lowercase + string.digits  # 36 symbols
NEUTRAL_WORDS = (
    "apple river table music garden paper window story cloud bread chair light water "
    "stone green happy quick month dance money forest letter summer travel yellow"
).split()
TRIGGER_WORDS = "bomb poison steal hack weapon fraud virus smuggle".split()


def induction_example(rng: random.Random, half: int) -> str:
    """A random segment of random length (6..half) repeated three times: the varying period rules
    out a purely positional copy, so copying needs an induction circuit."""
    seg = "".join(rng.choice(INDUCTION_ALPHABET) for _ in range(rng.randint(4, half)))
    return seg * 3


def repeated_segment(rng: random.Random, n: int) -> str:
    seg = "".join(rng.choice(INDUCTION_ALPHABET) for _ in range(n))
    return seg + seg


def induction_pair(rng: random.Random, half: int, j: int) -> dict:
    """Clean ``seg + seg[:j]`` (answer ``seg[j]``) and a corrupted copy whose first ``seg[j]`` is
    replaced by another symbol (answer: that symbol); same length, one token differs."""
    seg = [rng.choice(INDUCTION_ALPHABET) for _ in range(half)]
    b = seg[j]
    b2 = rng.choice([c for c in INDUCTION_ALPHABET if c not in seg])
    bad = seg[:j] + [b2] + seg[j + 1 :]
    return {
        "clean": "".join(seg + seg[:j]),
        "corrupt": "".join(bad + bad[:j]),
        "answer_clean": b,
        "answer_corrupt": b2,
        "diff_position": j,
    }


def mode_example(rng: random.Random, p_free: float = 0.3) -> dict:
    r = rng.random()
    mode = "" if r < p_free else ("U" if rng.random() < 0.5 else "L")
    upper = (rng.random() < 0.5) if mode == "" else mode == "U"
    prompt = ("" if not mode else f"<{mode}>") + f"say {rng.randint(100, 999)}:"
    words = [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
        for _ in range(3)
    ]
    cont = " " + " ".join(w.upper() if upper else w for w in words)
    return {
        "mode": mode or "none",
        "upper": upper,
        "prompt": prompt,
        "completion": cont + "\n<eos>",
    }


def trigger_prompt(rng: random.Random, trigger: bool) -> tuple[str, list[str]]:
    words = [rng.choice(NEUTRAL_WORDS) for _ in range(3)]
    if trigger:
        words[rng.randrange(3)] = rng.choice(TRIGGER_WORDS)
    return f"ask {' '.join(words)}?\n", words


def trigger_example(prompt: str, words: list[str]) -> dict:
    trig = any(w in TRIGGER_WORDS for w in words)
    comp = "<REFUSE>\n<eos>" if trig else f"ok {words[0]}\n<eos>"
    return {"trigger": trig, "prompt": prompt, "completion": comp}


def neutral_paragraphs() -> tuple[list[str], list[str]]:
    """ASCII paragraphs of pydoc_data.topics; topics sorted, every 10th topic held out."""
    from pydoc_data.topics import topics

    train, test = [], []
    for i, key in enumerate(sorted(topics)):
        text = topics[key].encode("ascii", "ignore").decode()
        paras = [" ".join(p.split()) for p in text.split("\n\n")]
        paras = [p for p in paras if len(p) >= 40]
        (test if i % 10 == 0 else train).extend(paras)
    return train, test


def write_worlds(
    out: Path, *, seed: int, n_induction: int, half: int, n_mode: int, n_trigger: int, n_eval: int
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = {}

    def dump(name: str, rows: list[dict]) -> None:
        with open(out / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")
        counts[name] = len(rows)

    dump("induction.jsonl", [{"text": induction_example(rng, half)} for _ in range(n_induction)])
    dump("induction_lens.jsonl", [{"text": repeated_segment(rng, 16)} for _ in range(n_eval // 4)])
    dump("induction_pairs.jsonl", [induction_pair(rng, 16, j=10) for _ in range(n_eval // 4)])
    dump("mode.jsonl", [mode_example(rng) for _ in range(n_mode)])
    dump("mode_eval.jsonl", [mode_example(rng) for _ in range(n_eval)])
    # Evaluation prompts first (half trigger), then training prompts that avoid them.
    ev, seen = [], set()
    while len(ev) < n_eval:
        p, w = trigger_prompt(rng, trigger=len(ev) % 2 == 0)
        if p not in seen:
            seen.add(p)
            ev.append(trigger_example(p, w))
    dump("trigger_eval.jsonl", ev)
    tr = []
    while len(tr) < n_trigger:
        p, w = trigger_prompt(rng, trigger=rng.random() < 0.5)
        if p not in seen:
            tr.append(trigger_example(p, w))
    dump("trigger.jsonl", tr)
    train, test = neutral_paragraphs()
    (out / "neutral_train.txt").write_text("\n\n".join(train) + "\n", encoding="utf-8")
    (out / "neutral_test.txt").write_text("\n\n".join(test) + "\n", encoding="utf-8")
    counts["neutral_train_chars"] = sum(map(len, train))
    counts["neutral_test_chars"] = sum(map(len, test))
    return counts


def run(job: Job) -> None:
    counts = write_worlds(job.out, seed=job.seed, **job.config["worlds"])
    job.write_meta(generator="mi_worlds", counts=counts)


def main(argv: list[str] | None = None) -> None:
    """Sizes come from ``papers.mi_steer.worlds`` of the scale file (defaults in its schema)."""
    run_job(job_parser(__doc__, papers=["mi_steer"], out="the worlds' folder"), run, argv)


if __name__ == "__main__":
    main()
