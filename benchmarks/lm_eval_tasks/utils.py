"""Dataset loaders for the local lm-eval tasks.

lm-eval calls ``custom_dataset`` with the TaskManager's metadata as keyword arguments; the
suite passes ``data_dir`` (the scale's data folder, absolute), so the YAMLs carry no paths and
work from any working directory (a relative path in a task YAML resolves against the
process's working directory, not the YAML's folder).
"""

from __future__ import annotations

import json
import os

import datasets


def _rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"lm-eval task data not found: {path} (was the data rule run?)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load(data_dir: str | None, rel: str) -> datasets.DatasetDict:
    if not data_dir:
        raise ValueError("claimbench lm-eval tasks need metadata data_dir=<scale data folder>")
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(_rows(os.path.join(data_dir, rel)))}
    )


def load_arith_id(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    return _load(data_dir, "arith/test_id.jsonl")


def load_arith_ood(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    return _load(data_dir, "arith/test_ood.jsonl")


def load_arith_mc(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    return _load(data_dir, "arith/mc_test.jsonl")


def load_text(data_dir: str | None = None, **_) -> datasets.DatasetDict:
    return _load(data_dir, "text/test.jsonl")
