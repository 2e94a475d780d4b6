"""The papers' math data sets at the paper scale, as (prompt, answer) rows, and their prompts.

Each data set is an entry of the scale file's top-level ``datasets:`` block (names and choices:
``methods/posttrain/DATA.md``): a hub id read from the local ``datasets`` cache only (never
downloaded by a job: ``claimbench prefetch`` fetches it beforehand), a ``save_to_disk`` folder,
or a local ``json``/``parquet`` file; a column map turns its rows into
``{"id", "prompt", "answer"[, "completion"]}``. :func:`format_prompt` builds the text a model
sees from a question: through the model's own chat template, or the Open-Reasoner-Zero prompt
for a base model (methods/noisy_rewards/README.md).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from claimbench.errors import ClaimbenchError

# The instruction of PSFT, G-OPD and DeepSeek-R1's recommended math prompt.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Open-Reasoner-Zero's prompt for a base model (no chat template), which the noisy-rewards paper
# trains with: a User/Assistant preamble, <think>/<answer> tags, the answer in \boxed{}, ending
# in "Assistant: <think>" so that the completion starts inside the reasoning (ORZ's template
# renders the model's bos_token first, which Qwen2.5's base tokenizer does not have).
ORZ_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> "
    "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>. User: You must put "
    "your answer inside <answer> </answer> tags, i.e., <answer> answer here </answer>. And your "
    "final answer will be extracted automatically by the \\boxed{{}} tag.\n"
    "This is the problem:\n{question}\n\nAssistant: <think>"
)

# name -> how the prompt is built (DATA.md). ``chat``: through tok.apply_chat_template.
PROMPT_FORMATS: dict[str, dict[str, Any]] = {
    # G-OPD: Qwen3 in non-thinking mode, the instruction after the question.
    "qwen3_nothink": {
        "chat": True,
        "suffix": " " + BOXED_INSTRUCTION,
        "template_kwargs": {"enable_thinking": False},
    },
    # PSFT: the instruction as the system turn (Qwen2.5-7B-Instruct's template).
    "boxed_system": {"chat": True, "system": BOXED_INSTRUCTION},
    # Realignment on DeepSeek-R1-Distill: no system turn, the instruction in the user turn.
    "r1_distill": {"chat": True, "suffix": "\n" + BOXED_INSTRUCTION},
    # Noisy rewards on the base Qwen2.5-7B: no chat template.
    "orz": {"chat": False, "template": ORZ_PROMPT},
    "plain": {"chat": False, "template": "{question}"},
}

ANSWER_FORMATS = ("raw", "boxed", "gsm8k")
LOCAL_BUILDERS = ("json", "parquet", "csv", "arrow")


def format_prompt(tok, question: str, fmt: str) -> str:
    """The text the model sees for ``question`` under prompt format ``fmt``."""
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"prompt format {fmt!r}: not one of {sorted(PROMPT_FORMATS)}")
    spec = PROMPT_FORMATS[fmt]
    if not spec["chat"]:
        return spec["template"].format(question=question)
    if not getattr(tok, "chat_template", None):
        raise ValueError(
            f"prompt format {fmt!r}: the tokenizer {getattr(tok, 'name_or_path', '')!r} has no "
            "chat template"
        )
    messages = []
    if spec.get("system"):
        messages.append({"role": "system", "content": spec["system"]})
    messages.append({"role": "user", "content": question + spec.get("suffix", "")})
    return tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **spec.get("template_kwargs", {})
    )


def dataset_spec(config: dict, name: str, file: str | None = None) -> dict:
    """The entry ``datasets.<name>`` of a scale config (a one-line error naming ``file``, the
    scale file, when it is absent)."""
    block = config.get("datasets") or {}
    if name not in block:
        file = file or f"config/scales/{config.get('scale', '?')}.yaml"
        raise ClaimbenchError(
            f"{file}: datasets.{name}: no such data set "
            f"(defined: {', '.join(sorted(block)) or 'none'})"
        )
    return {"_name": name, **block[name]}


def _label(spec: dict) -> str:
    return f"datasets.{spec.get('_name', '?')} ({spec.get('path')})"


def _get(row: dict, path: str) -> Any:
    node: Any = row
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _turn(value: Any, role: str) -> Any:
    """A list of chat turns -> the content of the last turn of ``role``; a list of strings -> its
    first element; anything else as is."""
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, dict) and "content" in v for v in value):
            turns = [v["content"] for v in value if v.get("role") == role]
            return turns[-1] if turns else None
        return value[0] if value else None
    return value


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces
    balanced; None when there is none or it is not closed."""
    if not isinstance(text, str):
        return None
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i = starts[-1]
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def _answer(value: Any, fmt: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    if fmt == "boxed":
        return last_boxed(text)
    if fmt == "gsm8k":
        return text.split("####")[-1].strip().replace(",", "") if "####" in text else None
    return text.strip()


def _keep(row: dict, where: dict) -> bool:
    for col, cond in where.items():
        v = _get(row, col)
        if "equals" in cond and v != cond["equals"]:
            return False
        if "min" in cond and (v is None or float(v) < cond["min"]):
            return False
        if "max" in cond and (v is None or float(v) > cond["max"]):
            return False
    return True


@contextlib.contextmanager
def _offline():
    """Hub access off while a data set is opened, whatever the environment says."""
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def open_dataset(spec: dict):
    """The ``datasets.Dataset`` of an entry's split, from disk or the local cache only."""
    import datasets

    path, split = str(spec["path"]), spec.get("split", "train")
    with _offline():
        if Path(path).is_dir() and any(
            (Path(path) / f).is_file()
            for f in ("dataset_info.json", "state.json", "dataset_dict.json")
        ):
            ds = datasets.load_from_disk(path)
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        if path in LOCAL_BUILDERS:
            files = spec.get("data_files")
            if not files:
                raise ClaimbenchError(f"{_label(spec)}: data_files: a {path} data set needs files")
            missing = [f for f in files.values() if not Path(f).exists()]
            if missing:
                raise ClaimbenchError(f"{_label(spec)}: data_files: {missing[0]}: no such file")
            return datasets.load_dataset(path, data_files=files, split=split)
        if Path(path).is_absolute() or path.startswith("."):
            raise ClaimbenchError(f"{_label(spec)}: path: {path}: no saved data set there")
        try:
            return datasets.load_dataset(
                path,
                spec.get("name"),
                split=split,
                revision=spec.get("revision"),
                data_files=spec.get("data_files"),
            )
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as e:
            why = " ".join(str(e).split())[:200]
            raise ClaimbenchError(
                f"{_label(spec)}: not in the local datasets cache "
                f"({os.environ.get('HF_DATASETS_CACHE') or datasets.config.HF_DATASETS_CACHE}); "
                f"run `claimbench prefetch --scale paper` where the network is reachable ({why})"
            ) from None


def rows_from(records, spec: dict, limit: int | None = None) -> list[dict]:
    """(prompt, answer[, completion]) rows of an iterable of raw records under ``spec``."""
    cols = spec.get("columns") or {}
    for key in ("prompt", "answer"):
        if key not in cols:
            raise ClaimbenchError(f"{_label(spec)}: columns.{key}: missing")
    fmt = spec.get("answer_format", "raw")
    if fmt not in ANSWER_FORMATS:
        raise ClaimbenchError(f"{_label(spec)}: answer_format: {fmt!r} not in {ANSWER_FORMATS}")
    where = spec.get("where") or {}
    limit = limit if limit is not None else spec.get("limit")
    out: list[dict] = []
    checked = False
    for i, rec in enumerate(records):
        if not checked:  # a wrong column map fails on the first row, naming the column
            for key, col in cols.items():
                if _get(rec, col) is None and col.split(".")[0] not in rec:
                    raise ClaimbenchError(
                        f"{_label(spec)}: columns.{key}: {col!r} is not a column "
                        f"(columns: {', '.join(sorted(rec))})"
                    )
            checked = True
        if where and not _keep(rec, where):
            continue
        prompt = _turn(_get(rec, cols["prompt"]), "user")
        answer = _answer(_turn(_get(rec, cols["answer"]), "assistant"), fmt)
        if prompt is None or answer is None or answer == "":
            continue  # a row without a question or a checkable answer cannot be scored
        row = {"id": str(_get(rec, cols["id"])) if "id" in cols else str(i)}
        row["prompt"], row["answer"] = str(prompt), answer
        if "completion" in cols:
            row["completion"] = _turn(_get(rec, cols["completion"]), "assistant")
        out.append(row)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ClaimbenchError(f"{_label(spec)}: no rows with a prompt and an answer")
    return out


def load_rows(spec: dict, limit: int | None = None) -> list[dict]:
    """Rows ``{"id", "prompt", "answer"[, "completion"]}`` of a ``datasets`` entry."""
    return rows_from(open_dataset(spec), spec, limit)


def load_named(
    config: dict, name: str, limit: int | None = None, file: str | None = None
) -> list[dict]:
    """Rows of the scale config's data set ``name`` (``file``: the scale file, for errors)."""
    return load_rows(dataset_spec(config, name, file), limit)
