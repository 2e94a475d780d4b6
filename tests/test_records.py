import json

import pytest

from claimbench.errors import RecordError
from claimbench.records import load_run_record, make_run_id, metric, series
from tests.helpers import write_record


def test_round_trip(tmp_path):
    path = write_record(tmp_path, "a", [("t", "acc", 0.5, 0.1)])
    rec = load_run_record(path)
    assert rec["metrics"][0] == {
        "task": "t",
        "metric": "acc",
        "value": 0.5,
        "stderr": 0.1,
        "n": 100,
        "higher_is_better": True,
    }
    assert rec["run_id"] == make_run_id("tiny", "demo", "a", "lm_eval", {"variant": "a"})
    assert set(rec["provenance"]) >= {
        "git_sha",
        "git_dirty",
        "versions",
        "wall_s",
        "host",
        "device",
    }
    assert not list(path.parent.glob(".*.tmp")), "no temp files left behind"


def test_run_id_depends_on_config():
    assert make_run_id("tiny", "p", "v", "s", {"a": 1}) != make_run_id(
        "tiny", "p", "v", "s", {"a": 2}
    )
    assert make_run_id("tiny", "p", "v", "s", {"a": 1, "b": 2}) == make_run_id(
        "tiny", "p", "v", "s", {"b": 2, "a": 1}
    )


def test_non_finite_stderr_becomes_null():
    assert metric("t", "ppl", 3.0, stderr=float("nan"))["stderr"] is None
    assert metric("t", "ppl", 3.0, stderr="N/A")["stderr"] is None


def test_truncated_record_names_file(tmp_path):
    path = write_record(tmp_path, "a", [("t", "acc", 0.5, 0.1)])
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(RecordError, match=str(path).replace(".", r"\.") + ".*truncated"):
        load_run_record(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("metrics"), "missing key 'metrics'"),
        (lambda r: r.update(seed="zero"), "key 'seed' has type str"),
        (lambda r: r.update(scale="huge"), 'scale: "huge": not one of'),
        (lambda r: r["metrics"][0].pop("value"), r"metrics\[0\] is missing key 'value'"),
        (lambda r: r["metrics"][0].update(value="high"), r"metrics\[0\].value"),
        (lambda r: r["provenance"].pop("git_sha"), "provenance is missing key 'git_sha'"),
        (lambda r: r.update(series=[{"name": "c", "x": [1, 2], "y": [1]}]), "equal length"),
    ],
)
def test_contract_violations_are_named(tmp_path, mutate, message):
    path = write_record(tmp_path, "a", [("t", "acc", 0.5, 0.1)])
    rec = json.loads(path.read_text())
    mutate(rec)
    path.write_text(json.dumps(rec))
    with pytest.raises(RecordError, match=message):
        load_run_record(path)


def test_series_drops_non_finite_points():
    s = series("loss", [0, 1, 2], [1.0, float("nan"), 0.5], "step", "loss")
    assert s["x"] == [0.0, 2.0] and s["y"] == [1.0, 0.5]


@pytest.mark.parametrize("name", ["../b/x.jsonl", "/etc/x.jsonl", "a/x.jsonl", ".x.jsonl", "x.txt"])
def test_writer_refuses_a_samples_reference_that_is_not_a_bare_name(name):
    from claimbench import provenance
    from claimbench.records import make_run_record

    with pytest.raises(RecordError, match=r"<new record>: samples: .*must be the bare name"):
        make_run_record(
            scale="tiny",
            paper="p",
            method="p",
            variant="v",
            base_model="b",
            suite="s",
            tasks=["t"],
            seed=0,
            config={},
            metrics=[metric("t", "acc", 0.5, n=3)],
            provenance=provenance.capture(),
            samples=name,
        )


def test_sample_counts_are_checked_only_where_rows_score_the_metric(tmp_path):
    """The rule every real writer meets: a metric with an n that its task's rows score per
    document has exactly n such rows; aggregate-only metrics (no per-row score) and row scores
    with no metric of their own (diagnostics) are not counted."""
    from claimbench import provenance
    from claimbench.io import atomic_write_jsonl
    from claimbench.records import iter_samples, make_run_record, write_run_record

    rows = [
        {"task": "t", "doc_id": i, "metrics": {"acc": 1.0, "diag": [0.5, 2.0]}} for i in range(3)
    ]
    rows.append({"task": "other", "doc_id": 0, "metrics": {}})
    atomic_write_jsonl(tmp_path / "s.samples.jsonl", rows)

    def record(n_acc):
        rec = make_run_record(
            scale="tiny",
            paper="p",
            method="p",
            variant="v",
            base_model="b",
            suite="s",
            tasks=["t"],
            seed=0,
            config={},
            metrics=[
                metric("t", "acc", 1.0, n=n_acc),
                metric("t", "speedup", 2.0, n=999),  # aggregate only: no per-row score
                metric("t", "mean_len", 4.0),  # n unknown
            ],
            provenance=provenance.capture(),
            samples="s.samples.jsonl",
        )
        return write_run_record(tmp_path / "s.json", rec), rec

    path, rec = record(3)
    assert [r["doc_id"] for r in iter_samples(path, rec)] == [0, 1, 2, 0]
    path, rec = record(4)
    with pytest.raises(RecordError, match=r"s\.samples\.jsonl: t\.acc: 3 rows: expected 4"):
        list(iter_samples(path, rec))


def test_lm_eval_filters_log_one_row_per_document_and_filter(tmp_path):
    """gsm8k has two filters: lm-eval logs every document twice and the record holds two
    exact_match metrics; their n add up, a document may appear twice, not three times."""
    from claimbench import provenance
    from claimbench.io import atomic_write_jsonl
    from claimbench.records import iter_samples, make_run_record, write_run_record

    rec = make_run_record(
        scale="tiny",
        paper="p",
        method="p",
        variant="v",
        base_model="b",
        suite="lm_eval",
        tasks=["gsm8k"],
        seed=0,
        config={},
        metrics=[metric("gsm8k", "exact_match", v, n=3) for v in (0.5, 0.6)],
        provenance=provenance.capture(),
        samples="lm_eval.samples.jsonl",
    )
    path = write_run_record(tmp_path / "lm_eval.json", rec)

    def rows(docs):
        atomic_write_jsonl(
            tmp_path / "lm_eval.samples.jsonl",
            [{"task": "gsm8k", "doc_id": d, "metrics": {"exact_match": 1.0}} for d in docs],
        )
        return list(iter_samples(path, rec))

    assert len(rows([0, 1, 2, 0, 1, 2])) == 6
    with pytest.raises(RecordError, match=r"gsm8k\.exact_match: 5 rows: expected 6 .*metrics\[1\]"):
        rows([0, 1, 2, 0, 1])
    with pytest.raises(RecordError, match=r"line 3: doc_id: 0: repeats a document of task"):
        rows([0, 0, 0, 1, 2, 1])
