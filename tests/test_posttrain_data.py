"""The paper scale's data sets as (prompt, answer) rows: every loader path on local micro copies
(``save_to_disk`` folders, parquet, json), the column maps of ``config/scales/paper.yaml`` on rows
laid out like each hub set, and the one-line errors (nothing is downloaded)."""

from __future__ import annotations

import pytest
import yaml

from claimbench.errors import ClaimbenchError
from methods.posttrain.data import dataset_spec, load_named, load_rows, rows_from

# One or two rows per data set, in the column layout of its hub copy (DATA.md).
HUB_LAYOUTS = {
    "openr1_math_46k": [
        {
            "data_source": "openr1",
            "prompt": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "What is 1/2 + 1/2?"},
            ],
            "target": [{"role": "assistant", "content": "<think>add</think> \\boxed{1}"}],
            "ability": "math",
            "reward_model": {"ground_truth": "1", "style": "rule"},
            "extra_info": {"index": 0},
        }
    ],
    "deepmath_103k_d6": [
        {"question": "easy", "final_answer": "2", "difficulty": 3.0, "topic": "a"},
        {"question": "hard", "final_answer": "\\frac{1}{2}", "difficulty": 6.5, "topic": "b"},
    ],
    "deepscaler_40k": [{"problem": "Find x.", "answer": "7", "solution": "x = 7"}],
    "openr1_math_220k": [
        {
            "problem": "Find y.",
            "solution": "y = 3",
            "answer": "3",
            "generations": ["<think>so</think> \\boxed{3}", "<think>no</think> \\boxed{4}"],
        }
    ],
    "math500": [
        {
            "problem": "P?",
            "solution": "\\boxed{5}",
            "answer": "5",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/1.json",
        }
    ],
    "aime24": [{"ID": "2024-I-1", "Problem": "A?", "Solution": "s", "Answer": 204}],
    "aime25": [{"problem": "B?", "answer": "70", "id": "0"}],
    "gsm8k": [{"question": "How many?", "answer": "3 + 4 = 7\n#### 1,007"}],
}
EXPECTED = {
    "openr1_math_46k": [("What is 1/2 + 1/2?", "1", "<think>add</think> \\boxed{1}")],
    "deepmath_103k_d6": [("hard", "\\frac{1}{2}", None)],
    "deepscaler_40k": [("Find x.", "7", None)],
    "openr1_math_220k": [("Find y.", "3", "<think>so</think> \\boxed{3}")],
    "math500": [("P?", "5", None)],
    "aime24": [("A?", "204", None)],
    "aime25": [("B?", "70", None)],
    "gsm8k": [("How many?", "1007", None)],
}


@pytest.fixture(scope="module")
def paper_datasets(root):
    return yaml.safe_load((root / "config/scales/paper.yaml").read_text())["datasets"]


def test_every_paper_data_set_maps_its_hub_layout(paper_datasets):
    assert set(paper_datasets) == set(HUB_LAYOUTS)
    for name, spec in paper_datasets.items():
        rows = rows_from(HUB_LAYOUTS[name], {"_name": name, **spec})
        got = [(r["prompt"], r["answer"], r.get("completion")) for r in rows]
        assert got == EXPECTED[name], name
    ids = rows_from(HUB_LAYOUTS["math500"], paper_datasets["math500"])
    assert ids[0]["id"] == "test/algebra/1.json"


def test_eval_sets_name_their_lm_eval_task(paper_datasets):
    for name, spec in paper_datasets.items():
        assert spec["papers"], name
        assert (spec["role"] == "eval") == ("lm_eval_task" in spec), name


def test_save_to_disk_folder_dataset_and_dataset_dict(tmp_path, paper_datasets):
    import datasets

    ds = datasets.Dataset.from_list(HUB_LAYOUTS["deepmath_103k_d6"])
    ds.save_to_disk(str(tmp_path / "flat"))
    spec = {**paper_datasets["deepmath_103k_d6"], "path": str(tmp_path / "flat")}
    assert [(r["prompt"], r["answer"]) for r in load_rows(spec)] == [("hard", "\\frac{1}{2}")]
    # a DatasetDict folder: the entry's split is picked
    dd = datasets.DatasetDict(
        {"train": ds, "test": datasets.Dataset.from_list(HUB_LAYOUTS["aime25"])}
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    spec = {**paper_datasets["aime25"], "path": str(tmp_path / "dict")}
    assert [(r["id"], r["prompt"], r["answer"]) for r in load_rows(spec)] == [("0", "B?", "70")]


def test_parquet_and_json_files(tmp_path, paper_datasets):
    import datasets

    ds = datasets.Dataset.from_list(HUB_LAYOUTS["openr1_math_46k"] * 3)
    ds.to_parquet(str(tmp_path / "openr1.parquet"))
    spec = {
        **paper_datasets["openr1_math_46k"],
        "path": "parquet",
        "data_files": {"train": str(tmp_path / "openr1.parquet")},
    }
    rows = load_rows(spec, limit=2)
    assert len(rows) == 2 and rows[0]["answer"] == "1" and rows[1]["id"] == "1"
    assert rows[0]["completion"].endswith("\\boxed{1}")
    datasets.Dataset.from_list(HUB_LAYOUTS["gsm8k"]).to_json(str(tmp_path / "g.jsonl"))
    spec = {
        **paper_datasets["gsm8k"],
        "path": "json",
        "split": "test",
        "data_files": {"test": str(tmp_path / "g.jsonl")},
    }
    assert load_rows(spec)[0]["answer"] == "1007"


def test_load_named_reads_the_scale_config(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"q": "x?", "a": "\\boxed{9} or so"}]).save_to_disk(
        str(tmp_path / "d")
    )
    config = {
        "scale": "paper",
        "datasets": {
            "mine": {
                "path": str(tmp_path / "d"),
                "split": "train",
                "columns": {"prompt": "q", "answer": "a"},
                "answer_format": "boxed",
            }
        },
    }
    assert load_named(config, "mine") == [{"id": "0", "prompt": "x?", "answer": "9"}]
    with pytest.raises(ClaimbenchError, match=r"datasets\.other: no such data set \(defined: mine"):
        dataset_spec(config, "other")


def test_hub_id_not_in_the_cache_is_one_line_and_downloads_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    spec = {"_name": "x", "path": "no-such-org/no-such-set", "split": "train"}
    spec["columns"] = {"prompt": "p", "answer": "a"}
    with pytest.raises(ClaimbenchError) as e:
        load_rows(spec)
    msg = str(e.value)
    assert "\n" not in msg and "datasets.x (no-such-org/no-such-set)" in msg
    assert "claimbench prefetch" in msg


@pytest.mark.parametrize(
    "spec, rows, match",
    [
        ({"columns": {"prompt": "q"}}, [{"q": "1"}], r"columns\.answer: missing"),
        ({"columns": {"prompt": "q", "answer": "ans"}}, [{"q": "1", "a": "2"}], "'ans' is not"),
        (
            {"columns": {"prompt": "q", "answer": "a"}, "answer_format": "latex"},
            [{"q": "1", "a": "2"}],
            "answer_format",
        ),
        (  # no row has a checkable answer
            {"columns": {"prompt": "q", "answer": "a"}, "answer_format": "boxed"},
            [{"q": "1", "a": "no box"}],
            "no rows with a prompt and an answer",
        ),
    ],
)
def test_bad_column_maps_are_one_line(spec, rows, match):
    with pytest.raises(ClaimbenchError, match=match) as e:
        rows_from(rows, {"_name": "t", "path": "p", **spec})
    assert "\n" not in str(e.value) and str(e.value).startswith("datasets.t (p): ")


def test_missing_local_files_name_the_file(tmp_path):
    spec = {"_name": "t", "path": "parquet", "split": "train"}
    spec["columns"] = {"prompt": "q", "answer": "a"}
    with pytest.raises(ClaimbenchError, match="data_files: a parquet data set needs files"):
        load_rows(spec)
    spec["data_files"] = {"train": str(tmp_path / "none.parquet")}
    with pytest.raises(ClaimbenchError, match="none.parquet: no such file"):
        load_rows(spec)
    with pytest.raises(ClaimbenchError, match="no saved data set there"):
        load_rows({**spec, "path": str(tmp_path / "empty")})


def test_where_filters_and_limit():
    rows = [{"q": str(i), "a": str(i), "d": float(i)} for i in range(10)]
    spec = {"_name": "t", "path": "p", "columns": {"prompt": "q", "answer": "a"}}
    spec["where"] = {"d": {"min": 3, "max": 7}}
    assert [r["prompt"] for r in rows_from(rows, spec)] == ["3", "4", "5", "6", "7"]
    assert [r["prompt"] for r in rows_from(rows, {**spec, "limit": 2})] == ["3", "4"]
    assert [r["prompt"] for r in rows_from(rows, spec, limit=1)] == ["3"]
    spec["where"] = {"q": {"equals": "8"}}
    assert [r["id"] for r in rows_from(rows, spec)] == ["8"]
