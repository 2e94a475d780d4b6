"""G-OPD's headroom gate (methods/gopd/README.md, "Expected directions"): G1 and G2 count only
when the same-size teacher beats the student by at least 3 standard errors; otherwise they are
inconclusive with that reason, decided from the teacher and student runs alone. Also: the
multi-teacher grid must hold lambda = 1 (G4's budget control)."""

from __future__ import annotations

import copy

import pytest
import yaml

from claimbench import claims as claims_mod
from claimbench.config import CONFIG_DIR
from claimbench.errors import ConfigError

GATE = {
    "reason": "headroom: the same-size teacher beats the student in-domain by at least 3 se",
    "z": 3,
    "check": {
        "compare": {
            "lhs": {"variant": "teacher", "task": "arith_id", "metric": "exact_match"},
            "op": ">",
            "rhs": {"variant": "student", "task": "arith_id", "metric": "exact_match"},
        }
    },
}
G1 = {
    "compare": {
        "lhs": {"variant": "lam1.0", "task": "arith_id", "metric": "exact_match"},
        "op": ">=",
        "rhs": {"variant": "teacher", "task": "arith_id", "metric": "exact_match"},
        "noninferiority": True,
        "margin": 0.02,
    }
}


def _m(variant, value, n=200):
    return {
        "scale": "tiny",
        "paper": "gopd",
        "variant": variant,
        "suite": "lm_eval",
        "task": "arith_id",
        "metric": "exact_match",
        "value": value,
        "stderr": (value * (1 - value) / n) ** 0.5,
        "n": n,
        "task_hash": None,
        "run_id": variant,
    }


def _claim():
    return {"paper": "gopd", "id": "g1", "kind": "paper", "scales": ["tiny"], "check": G1}


gated = pytest.mark.skipif(
    not hasattr(claims_mod, "setup_gate"),
    reason="claims' `requires` setup condition not in claimbench/claims.py yet",
)


@gated
@pytest.mark.parametrize(
    "teacher,student,gated_out",
    [(0.40, 0.145, False), (0.20, 0.145, True), (0.145, 0.20, True)],
)
def test_headroom_gate_decides_from_the_setup(teacher, student, gated_out):
    lookup = [_m("teacher", teacher), _m("student", student), _m("lam1.0", teacher + 0.3)]
    plain = claims_mod.check_all([_claim()], lookup, ["tiny"])[0]
    assert plain["status"] == "held"  # lam1.0 well above the teacher: held without the gate
    row = claims_mod.check_all([{**_claim(), "requires": GATE}], lookup, ["tiny"])[0]
    if gated_out:  # 0.055 lead over 200 problems is about 1.5-2 se, under 3: undecided
        assert row["status"] == "inconclusive"
        assert row["detail"].startswith("setup condition not met (headroom")
    else:
        assert row["status"] == "held" and row["detail"] == plain["detail"]


@gated
def test_headroom_gate_missing_setup_is_missing():
    lookup = [_m("teacher", 0.4), _m("lam1.0", 0.4)]
    row = claims_mod.check_all([{**_claim(), "requires": GATE}], lookup, ["tiny"])[0]
    assert row["status"] == "missing" and "setup condition" in row["detail"]


@gated
def test_gopd_claims_gate_g1_and_g2():
    _, rows = claims_mod.load_claims_file("methods/gopd/claims.yaml")
    by_id = {c["id"]: c for c in rows}
    for cid in ("g1_opd_recovers_teacher", "g2_interpolation_monotone"):
        for key in (cid, f"{cid}_3seeds"):
            req = by_id[key].get("requires")
            assert req and req["z"] == 3, key


def test_multi_teacher_grid_must_hold_opd(tmp_path):
    from claimbench.config import load_scale

    data = yaml.safe_load((CONFIG_DIR / "scales" / "small.yaml").read_text())
    assert 1.0 in data["papers"]["gopd"]["multi_teacher"]["lambdas"]
    bad = copy.deepcopy(data)
    bad["papers"]["gopd"]["multi_teacher"]["lambdas"] = [1.25]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ConfigError, match="multi_teacher.lambdas"):
        load_scale("small", path, papers=["gopd"])
