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
        (lambda r: r.update(scale="huge"), "'huge'"),
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
