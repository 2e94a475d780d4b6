import json

import pytest

from benchmarks.data import arith
from benchmarks.data.cli import build_arith

SPEC = {
    "id_families": ["add", "sub", "mul", "compare"],
    "ood_families": ["word2", "add3"],
    "n_train_per_family": 300,
    "n_eval_per_family": 20,
    "max_digits": 2,
}


@pytest.mark.parametrize("family", list(arith.FAMILIES))
def test_answers_are_correct(family):
    import random

    rng = random.Random(1)
    for i in range(200):
        p = arith.make_problem(family, rng, 3, f"x{i}")
        nums = [int(t) for t in arith.INT_RE.findall(p.question)]
        expected = {
            "add": lambda n: n[0] + n[1],
            "sub": lambda n: n[0] - n[1],
            "mul": lambda n: n[0] * n[1],
            "compare": max,
            "word2": lambda n: n[0] + n[1] - n[2],
            "add3": sum,
        }[family](nums)
        assert p.answer == expected, p
        assert p.long.endswith(f"So the answer is {expected}.")
        assert arith.extract_answer(p.long) == expected
        assert arith.extract_answer(p.short) == expected


def test_long_form_steps_are_arithmetic_truths():
    p = arith.make_problem("add", __import__("random").Random(0), 3, "x")
    for a, b, c in arith.re.findall(r"(\d+) \+ (\d+) = (\d+)", p.long):
        assert int(a) + int(b) == int(c) or "carry" in p.long


def test_extract_answer():
    assert arith.extract_answer(" 132\n") == 132
    assert arith.extract_answer("First 2 + 3 = 5. So the answer is 42.") == 42
    assert arith.extract_answer("no number here") is None
    assert arith.extract_answer("-7") == -7


def test_world_splits_are_disjoint_and_deterministic():
    w1 = arith.build_world(seed=3, **SPEC)
    w2 = arith.build_world(seed=3, **SPEC)
    assert [p.as_dict() for p in w1["train"]] == [p.as_dict() for p in w2["train"]]
    train_q = {p.question for p in w1["train"]}
    assert not train_q & {p.question for p in w1["test_id"]}
    assert not train_q & {p.question for p in w1["valid"]}
    assert {p.family for p in w1["train"]} == set(SPEC["id_families"])
    assert {p.family for p in w1["test_ood"]} == set(SPEC["ood_families"])
    assert len(w1["test_id"]) == 4 * 20 and len({p.question for p in w1["test_id"]}) == 80
    w3 = arith.build_world(seed=4, **SPEC)
    assert [p.question for p in w3["test_id"]] != [p.question for p in w1["test_id"]]


def test_overlapping_families_rejected():
    with pytest.raises(ValueError, match="both in-domain and out-of-domain"):
        arith.build_world(seed=0, **{**SPEC, "ood_families": ["add"]})


def test_multiple_choice_label_points_at_answer():
    w = arith.build_world(seed=0, **SPEC)
    items = arith.multiple_choice(w["test_id"], seed=0)
    for item, p in zip(items, w["test_id"], strict=True):
        assert len(set(item["choices"])) == 4
        assert item["choices"][item["label"]] == str(p.answer)


def test_cli_writes_manifest_with_hash(tmp_path):
    build_arith(SPEC, 0, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["test_ood"] == 40
    first = manifest["sha256"]
    build_arith(SPEC, 0, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["sha256"] == first


def test_cli_job_builds_the_scales_arith_world(tmp_path, capsys):
    """``benchmarks.data.cli arith`` is a job (paper base, variant arith) reading the scale's
    ``data.arith`` and seed: the same files as ``build_arith`` on that section."""
    from pathlib import Path

    import yaml

    from benchmarks.data.cli import main

    root = Path(__file__).resolve().parents[1]
    scale = yaml.safe_load((root / "config/scales/tiny.yaml").read_text())
    scale["seed"] = 3
    scale["data"]["arith"].update(SPEC)
    scale_file = tmp_path / "tiny.yaml"
    scale_file.write_text(yaml.safe_dump(scale))
    job = ["--scale", "tiny", "--scale-file", str(scale_file), "--paper", "base"]
    main(["arith", *job, "--variant", "arith", "--out", str(tmp_path / "cli")])
    build_arith(scale["data"]["arith"], 3, tmp_path / "direct")
    for name in ("train.jsonl", "test_ood.jsonl", "mc_test.jsonl", "manifest.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["arith", *job, "--variant", "text", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
    assert "--variant text: the arith data set's variant is 'arith'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
