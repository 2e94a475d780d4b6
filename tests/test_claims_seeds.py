"""The ``seeds`` check: a compare per seed, on the mean over seeds and a count of wins."""

import pytest

from claimbench.claims import check_all, load_claims_file
from claimbench.errors import ConfigError
from tests.helpers import write_claims


def row(variant, seed, value, stderr=None):
    return {
        "scale": "tiny",
        "paper": "p",
        "method": "p",
        "variant": variant,
        "base_model": "b",
        "suite": "retrieval",
        "task": "t2v",
        "metric": "R1",
        "value": value,
        "stderr": stderr,
        "n": 100,
        "higher_is_better": True,
        "run_id": f"{variant}{seed}",
        "seed": seed,
    }


def seeds_check(min_held=2, seeds=(0, 1, 2)):
    return {
        "seeds": {
            "seeds": list(seeds),
            "min_held": min_held,
            "compare": {
                "lhs": {"variant": "pig", "task": "t2v", "metric": "R1"},
                "op": ">",
                "rhs": {"variant": "tt", "task": "t2v", "metric": "R1"},
            },
        }
    }


def verdict(check, lookup):
    c = {"paper": "p", "id": "c", "statement": "s", "scales": ["tiny"], "check": check}
    return check_all([c], lookup, ["tiny"])[0]


def lookup(pig, tt):
    return [row("pig", s, v) for s, v in enumerate(pig)] + [
        row("tt", s, v) for s, v in enumerate(tt)
    ]


def test_held_when_mean_and_two_of_three_hold():
    v = verdict(seeds_check(), lookup([12.0, 13.0, 11.0], [10.0, 10.5, 11.5]))
    # diffs +2, +2.5, -0.5: mean +1.33, se = sd/sqrt(3) = 0.928; 1.33 < 1.96 * 0.928: the
    # mean cannot decide, and 2 seeds may still hold: inconclusive
    assert v["status"] == "inconclusive" and "(inconclusive)" in v["detail"]
    assert "held in 2/3, failed in 1" in v["detail"]
    v = verdict(seeds_check(), lookup([12.0, 13.0, 11.0], [10.0, 11.0, 11.5]))
    # diffs +2, +2, -0.5 -> se 0.833, mean 1.167 < 1.63: still not significant
    assert v["status"] == "inconclusive"
    v = verdict(seeds_check(), lookup([12.0, 13.0, 12.0], [10.0, 11.0, 10.2]))
    # diffs +2, +2, +1.8: mean 1.93, se 0.067 -> held; 3/3 seeds
    assert v["status"] == "held" and "held in 3/3" in v["detail"]


def test_failed_when_too_few_seeds_win():
    # mean clearly positive but only one seed wins
    v = verdict(seeds_check(min_held=2), lookup([20.0, 10.0, 10.0], [10.0, 10.0, 10.0]))
    assert v["status"] == "failed" and "held in 1/3, failed in 2 (need 2 held)" in v["detail"]


def test_failed_when_mean_wrong_direction():
    v = verdict(seeds_check(min_held=0), lookup([9.0, 9.5, 9.0], [10.0, 10.0, 10.0]))
    assert v["status"] == "failed"


def test_missing_seed_is_missing():
    v = verdict(seeds_check(seeds=(0, 1, 3)), lookup([12.0, 13.0, 12.0], [10.0, 11.0, 10.2]))
    assert v["status"] == "missing" and "@seed3" in v["detail"]


def test_seed_in_ref_disambiguates():
    lk = lookup([12.0, 13.0], [10.0, 11.0])
    cmp = {
        "compare": {
            "lhs": {"variant": "pig", "task": "t2v", "metric": "R1"},
            "op": ">",
            "rhs": {"variant": "tt", "task": "t2v", "metric": "R1"},
        }
    }
    with pytest.raises(ConfigError, match="seed"):
        verdict(cmp, lk)
    cmp["compare"]["lhs"]["seed"] = 1
    cmp["compare"]["rhs"]["seed"] = 1
    assert verdict(cmp, lk)["status"] == "held"


def test_schema_accepts_seeds_and_rejects_bad(tmp_path):
    p = write_claims(
        tmp_path, "p", [{"id": "c", "statement": "s", "scales": ["tiny"], "check": seeds_check()}]
    )
    load_claims_file(p)
    bad = seeds_check()
    bad["seeds"]["seeds"] = "all"
    p = write_claims(
        tmp_path, "q", [{"id": "c", "statement": "s", "scales": ["tiny"], "check": bad}]
    )
    with pytest.raises(ConfigError, match="seeds"):
        load_claims_file(p)


def test_per_seed_variant_names_and_a_shared_reference():
    # workflows name seed runs psft, psft-s1, psft-s2 (and psft-s1-rl); a teacher is one run
    # (their evaluation records carry the scale's evaluation seed, 0, not the training seed)
    rows = [row(v, 0, x) for v, x in (("psft", 12.0), ("psft-s1", 13.0))]
    rows += [row(v, 0, x) for v, x in (("psft-s2", 12.5), ("teacher", 10.0))]
    check = {
        "seeds": {
            "seeds": [0, 1, 2],
            "compare": {
                "lhs": {"variant": "psft{sfx}", "task": "t2v", "metric": "R1"},
                "op": ">",
                "rhs": {"variant": "teacher", "shared": True, "task": "t2v", "metric": "R1"},
            },
        }
    }
    v = verdict(check, rows)
    assert v["status"] == "held" and "held in 3/3" in v["detail"], v["detail"]
    check["seeds"]["compare"]["rhs"].pop("shared")  # the teacher has no seed-1 run
    assert verdict(check, rows)["status"] == "missing"


def test_threshold_on_the_mean_over_seeds():
    rows = [row(v, s, x) for v, s, x in (("ind", 0, 0.9), ("ind-s1", 1, 0.3), ("ind-s2", 2, 0.6))]
    check = {
        "seeds": {
            "seeds": [0, 1, 2],
            "threshold": {
                "ref": {"variant": "ind{sfx}", "task": "t2v", "metric": "R1"},
                "op": ">=",
                "value": 0.5,
            },
        }
    }
    v = verdict(check, rows)  # mean 0.6 ± 0.173 (sd/√3): the three seeds cannot decide
    assert v["status"] == "inconclusive" and "2/3 seeds over the threshold" in v["detail"]
    close = [dict(r, value=x) for r, x in zip(rows, (0.61, 0.59, 0.6), strict=True)]
    assert verdict(check, close)["status"] == "held"  # mean 0.6 ± 0.0058
    check["seeds"]["min_held"] = 3
    assert verdict(check, rows)["status"] == "failed"
    check["seeds"]["threshold"]["value"] = 0.7
    check["seeds"]["min_held"] = 0
    assert verdict(check, close)["status"] == "failed"  # 0.6 ± 0.0058 well below 0.7


def test_mean_over_seeds_keeps_the_shared_evaluation_noise():
    # three seeds, the same tiny deficit each (no spread over seeds), on a test set whose
    # sampling stderr (0.01 per metric) the seeds share: the mean is not significantly below
    rows = [row("pig", s, 0.50, 0.01) for s in range(3)]
    rows += [row("tt", s, 0.505, 0.01) for s in range(3)]
    check = seeds_check(min_held=0)
    check["seeds"]["compare"]["op"] = ">="
    v = verdict(check, rows)  # -0.005 ± 0.0141: neither side beyond the noise
    assert v["status"] == "inconclusive" and "± 0.0141" in v["detail"], v["detail"]
    # without stderrs only the (zero) seed spread is left, and the deficit is significant
    v = verdict(check, [dict(r, stderr=None) for r in rows])
    assert v["status"] == "failed", v["detail"]


def test_detail_says_the_difference_includes_the_margin():
    # pig >= tt - 5: per-seed pig - tt = -8, -9, -9, so the stored diff is -3.x (margin in)
    check = seeds_check(min_held=2)
    check["seeds"]["compare"].update(op=">=", margin=-5.0)
    v = verdict(check, lookup([52.0, 51.0, 51.0], [60.0, 60.0, 60.0]))
    assert v["status"] == "failed"
    assert "R1 - 5 over seeds" in v["detail"] and "(diff = lhs - rhs + 5)" in v["detail"]
    assert "seed 0: -3 failed" in v["detail"]


def test_nsds_random_draws_claim_reads_five_draws_and_needs_three():
    """NSDS's SmolLM2 random control: five packed draws (<src>-random-b3, -s1..-s4), NSDS
    compared with each; held only below the mean and below at least 3 draws (the median)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    _, claims = load_claims_file(root / "methods/nsds/claims.yaml")
    (claim,) = [c for c in claims if c["id"] == "smollm2_nsds_below_random_reversed"]

    def rows(nsds, draws, rev=9.0):
        names = ["smollm2-random-b3"] + [f"smollm2-random-b3-s{k}" for k in range(1, 5)]
        vals = [
            ("smollm2-nsds-b3", nsds),
            ("smollm2-reversed-b3", rev),
            *zip(names, draws, strict=False),
        ]
        return [
            dict(
                row(v, 0, x),
                scale="small",
                paper="nsds",
                method="m",
                suite="lm_eval",
                task="text_ppl",
                metric="bits_per_byte",
                higher_is_better=False,
            )
            for v, x in vals
        ]

    def status(lookup):
        return check_all([claim], lookup, ["small"])[0]

    held = status(rows(2.0, [2.5, 1.9, 2.6, 2.4, 2.2]))  # below 4 of 5 and their mean
    assert held["status"] == "held" and "held in 4/5" in held["detail"], held["detail"]
    # below the mean but only below 2 of the 5 draws: not below the median draw
    assert status(rows(2.0, [1.9, 1.95, 3.5, 3.5, 1.99]))["status"] == "failed"
    assert status(rows(2.0, [2.5, 2.5, 2.5, 2.5, 2.5], rev=1.0))["status"] == "failed"
    assert status(rows(2.0, [2.5, 2.5, 2.5, 2.5]))["status"] == "missing"  # a draw not run
