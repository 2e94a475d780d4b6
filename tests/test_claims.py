import pytest

from claimbench.claims import check_all, load_claims_file
from claimbench.errors import ConfigError
from tests.helpers import write_claims


def m(variant, task, metric, value, stderr=None, scale="tiny", paper="p"):
    return {
        "scale": scale,
        "paper": paper,
        "method": paper,
        "variant": variant,
        "base_model": "b",
        "suite": "lm_eval",
        "task": task,
        "metric": metric,
        "value": value,
        "stderr": stderr,
        "n": 100,
        "higher_is_better": True,
        "run_id": variant,
    }


def claim(check, scales=("tiny",)):
    return {"paper": "p", "id": "c", "statement": "s", "scales": list(scales), "check": check}


def verdict(check, lookup, scales=("tiny",), z=1.96):
    rows = check_all([claim(check)], lookup, list(scales), z=z)
    return rows[0] if rows else None


CMP = {
    "compare": {
        "lhs": {"variant": "a", "task": "t", "metric": "ppl"},
        "op": "<",
        "rhs": {"variant": "b", "task": "t", "metric": "ppl"},
    }
}


def test_compare_held_and_failed_without_stderr():
    assert verdict(CMP, [m("a", "t", "ppl", 1.0), m("b", "t", "ppl", 2.0)])["status"] == "held"
    assert verdict(CMP, [m("a", "t", "ppl", 3.0), m("b", "t", "ppl", 2.0)])["status"] == "failed"


def test_compare_needs_significance_when_stderr_given():
    # diff 0.1 with combined se 0.1414: right direction, inside the noise: the run cannot decide
    row = verdict(CMP, [m("a", "t", "ppl", 1.9, 0.1), m("b", "t", "ppl", 2.0, 0.1)])
    assert row["status"] == "inconclusive", row["detail"]
    assert "± 0.141 (z=1.96, z·se = 0.277)" in row["detail"], row["detail"]  # the bar it missed
    row = verdict(CMP, [m("a", "t", "ppl", 1.0, 0.1), m("b", "t", "ppl", 2.0, 0.1)])
    assert row["status"] == "held"
    assert row["observed"]["p/a:t.ppl"] == [1.0, 0.1]
    row = verdict(CMP, [m("a", "t", "ppl", 3.0, 0.1), m("b", "t", "ppl", 2.0, 0.1)])
    assert row["status"] == "failed"


def test_non_inferiority_uses_its_margin():
    check = {"compare": {**CMP["compare"], "op": "<=", "noninferiority": True, "margin": 0.5}}
    # a - b = +0.1 (worse by 0.1), se 0.141: 0.5 - 0.1 = 0.4 > 0.277 -> not worse by 0.5
    row = verdict(check, [m("a", "t", "ppl", 2.1, 0.1), m("b", "t", "ppl", 2.0, 0.1)])
    assert row["status"] == "held" and "non-inferiority, margin 0.5" in row["detail"]
    assert row["noninferiority_margin"] == 0.5
    row = verdict(check, [m("a", "t", "ppl", 3.0, 0.1), m("b", "t", "ppl", 2.0, 0.1)])
    assert row["status"] == "failed"
    rel = {"compare": {**check["compare"], "margin_rel": 0.1}}
    del rel["compare"]["margin"]
    row = verdict(rel, [m("a", "t", "ppl", 2.1, 0.01), m("b", "t", "ppl", 2.0, 0.01)])
    assert row["status"] == "held" and row["noninferiority_margin"] == pytest.approx(0.2)


def test_threshold_and_within_and_all():
    thr = {
        "threshold": {
            "ref": {"variant": "a", "task": "t", "metric": "acc"},
            "op": ">",
            "value": 0.25,
        }
    }
    assert verdict(thr, [m("a", "t", "acc", 0.40, 0.02)])["status"] == "held"
    assert verdict(thr, [m("a", "t", "acc", 0.27, 0.02)])["status"] == "inconclusive"
    assert verdict(thr, [m("a", "t", "acc", 0.20, 0.02)])["status"] == "failed"
    win = {
        "within": {
            "ref": {"variant": "a", "task": "t", "metric": "acc"},
            "value": 0.5,
            "tol_abs": 0.05,
        }
    }
    assert verdict(win, [m("a", "t", "acc", 0.53)])["status"] == "held"
    assert verdict(win, [m("a", "t", "acc", 0.60)])["status"] == "failed"
    # the z-interval 0.53 ± 0.039 straddles the tolerance's edge 0.55
    assert verdict(win, [m("a", "t", "acc", 0.53, 0.02)])["status"] == "inconclusive"
    assert verdict(win, [m("a", "t", "acc", 0.52, 0.01)])["status"] == "held"
    both = {"all": [thr, win]}
    assert verdict(both, [m("a", "t", "acc", 0.53, 0.01)])["status"] == "held"
    assert verdict(both, [m("a", "t", "acc", 0.20, 0.01)])["status"] == "failed"


def test_missing_and_scale_filtering():
    assert verdict(CMP, [m("a", "t", "ppl", 1.0)])["status"] == "missing"
    # a claim for the paper scale produces no verdict at tiny scale
    assert check_all([claim(CMP, scales=["paper"])], [m("a", "t", "ppl", 1.0)], ["tiny"]) == []
    # data of another scale does not count
    lookup = [m("a", "t", "ppl", 1.0, scale="small"), m("b", "t", "ppl", 2.0, scale="small")]
    assert verdict(CMP, lookup)["status"] == "missing"


def test_ambiguous_reference_is_an_error():
    lookup = [
        m("a", "t", "ppl", 1.0),
        m("a", "t", "ppl", 1.1) | {"suite": "other"},
        m("b", "t", "ppl", 2),
    ]
    with pytest.raises(ConfigError, match="matches 2 stored metrics"):
        verdict(CMP, lookup)


def entry(check, **kw):
    """A claims-file entry (the file names the paper once, at the top)."""
    return {k: v for k, v in claim(check).items() if k != "paper"} | kw


def test_claims_file_validation(tmp_path):
    good = write_claims(tmp_path, "p", [entry(CMP, id="x")])
    paper, claims = load_claims_file(good)
    assert paper["paper"] == "p" and claims[0]["id"] == "x"
    bad = write_claims(tmp_path, "q", [entry({"compare": {"lhs": {}, "op": "<<", "rhs": {}}})])
    with pytest.raises(ConfigError, match=r"claims\.yaml"):
        load_claims_file(bad)
    dup = write_claims(tmp_path, "r", [entry(CMP, id="x"), entry(CMP, id="x")])
    with pytest.raises(ConfigError, match="duplicate id"):
        load_claims_file(dup)


def test_repository_claim_files_are_valid(root):
    for path in sorted((root / "methods").glob("*/claims.yaml")):
        load_claims_file(path)


def test_an_error_while_checking_names_the_claims_file_and_claim(tmp_path):
    path = write_claims(tmp_path, "p", [entry(CMP, id="lower_ppl")])
    _, claims = load_claims_file(path)
    lookup = [
        m("a", "t", "ppl", 1.0),
        m("a", "t", "ppl", 1.1) | {"suite": "x"},
        m("b", "t", "ppl", 2),
    ]
    with pytest.raises(ConfigError) as err:
        check_all(claims, lookup, ["tiny"])
    assert str(err.value).startswith(f"{path}: claim 'lower_ppl': claim reference p/a:t.ppl")
