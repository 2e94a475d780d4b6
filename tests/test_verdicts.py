"""Verdict states, non-inferiority, power and pairing with hand-made numbers; the repository's
claims name resolvable sources; pipeline checks never count in a paper's totals."""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from claimbench.claims import check_all, claim_kind
from claimbench.stats import mcnemar_exact

Z = 1.96


def m(variant, value, stderr=None, task="t", metric="acc", n=100, task_hash=None):
    return {
        "scale": "tiny",
        "paper": "p",
        "method": "p",
        "variant": variant,
        "base_model": "b",
        "suite": "s",
        "task": task,
        "metric": metric,
        "value": value,
        "stderr": stderr,
        "n": n,
        "higher_is_better": True,
        "task_hash": task_hash,
        "run_id": variant,
    }


def verdict(check, lookup, scores=None, **claim):
    c = {"paper": "p", "id": "c", "statement": "s", "scales": ["tiny"], "check": check, **claim}
    rows = check_all([c], lookup, ["tiny"], z=Z, scores=scores)
    return rows[0]


def cmp(op=">", **extra):
    return {
        "compare": {
            "lhs": {"variant": "a", "task": "t", "metric": "acc"},
            "op": op,
            "rhs": {"variant": "b", "task": "t", "metric": "acc"},
            **extra,
        }
    }


SE = 0.05  # each side; the difference's se is 0.05·√2 = 0.0707
DSE = SE * math.sqrt(2)


def two(diff_in_se: float):
    """a - b = diff_in_se · DSE, both sides with stderr SE."""
    return [m("a", 0.5 + diff_in_se * DSE, SE), m("b", 0.5, SE)]


# --------------------------------------------------------------------------- the five states


def test_held_failed_inconclusive_missing_and_not_attempted():
    assert verdict(cmp(), two(+2.5))["status"] == "held"
    assert verdict(cmp(), two(-2.5))["status"] == "failed"
    assert verdict(cmp(), two(+1.0))["status"] == "inconclusive"
    assert verdict(cmp("<"), two(-2.5))["status"] == "held"  # direction follows the op
    assert verdict(cmp(), [m("a", 0.5, SE)])["status"] == "missing"
    rows = check_all(
        [
            {
                "paper": "p",
                "id": "big",
                "statement": "s",
                "scales": ["paper"],
                "not_attempted": "needs the paper's 70B model",
            }
        ],
        [],
        ["tiny"],
    )
    assert [(r["scale"], r["status"]) for r in rows] == [("paper", "not attempted")]
    assert "70B" in rows[0]["detail"]


def test_inconclusive_where_the_old_checker_said_failed():
    # `>` with the difference half a standard error on the wrong side: the run cannot tell
    # (the previous checker: failed, "not significant")
    row = verdict(cmp(), two(-0.5))
    assert row["status"] == "inconclusive", row["detail"]
    assert row["test"] == "unpaired z" and row["n"] == 100


def test_non_inferiority_where_the_old_checker_said_held():
    # `>=` 1.5 se below with a small margin (0.1 se): the previous checker held any `>=` whose
    # difference was not significantly negative (-1.5 se >= -1.96 se); now the margin decides
    small = 0.1 * DSE
    row = verdict(cmp(">=", noninferiority=True, margin=small), two(-1.5))
    assert row["status"] == "inconclusive", row["detail"]
    assert f"non-inferiority, margin {small:.4g}" in row["detail"]
    assert row["noninferiority_margin"] == pytest.approx(small)
    assert verdict(cmp(">=", noninferiority=True, margin=small), two(-2.5))["status"] == "failed"
    # a margin larger than the deficit plus z·se: shown not worse by more than the margin
    row = verdict(cmp(">=", noninferiority=True, margin=4 * DSE), two(-1.5))
    assert row["status"] == "held"
    # `<=`: lower is the claimed side; lhs may exceed rhs by at most the margin
    row = verdict(cmp("<=", noninferiority=True, margin_rel=0.5), two(+1.5))
    assert row["status"] == "held" and row["noninferiority_margin"] == pytest.approx(0.25)


def test_no_stderr_is_a_plain_comparison():
    row = verdict(cmp(), [m("a", 0.51), m("b", 0.5)])
    assert row["status"] == "held" and "no stderr: plain comparison" in row["detail"]
    assert row["mde"] is None and row["n_needed"] is None
    assert verdict(cmp(), [m("a", 0.49), m("b", 0.5)])["status"] == "failed"


def test_within_is_three_way_on_the_z_interval():
    win = {"within": {"ref": {"variant": "a", "task": "t", "metric": "acc"}, "value": 0.5}}
    win["within"]["tol_abs"] = 0.1
    assert verdict(win, [m("a", 0.52, 0.01)])["status"] == "held"  # [0.50, 0.54] inside
    assert verdict(win, [m("a", 0.58, 0.02)])["status"] == "inconclusive"  # [0.54, 0.62]
    assert verdict(win, [m("a", 0.75, 0.02)])["status"] == "failed"  # [0.71, 0.79] outside


def test_a_mean_of_metrics_is_checked_against_a_papers_average():
    """A paper's k-task average: value = mean, se = sqrt(sum se^2) / k, n = the smallest n,
    compared unpaired (a mean has no task hash); a missing part makes it missing."""
    parts = [{"variant": "a", "task": t, "metric": "acc"} for t in ("x", "y", "z")]
    win = {"within": {"ref": {"mean": parts}, "value": 0.6, "tol_abs": 0.05}}
    rows = [m("a", 0.5, 0.03, task="x", n=300), m("a", 0.6, 0.04, task="y"), m("a", 0.7, 0.0)]
    rows[2]["task"] = "z"
    r = verdict(win, rows)
    assert r["estimate"] == pytest.approx(0.6)
    assert r["stderr"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 3)  # 0.01667
    assert (r["status"], r["n"]) == ("held", 100)  # [0.567, 0.633] inside [0.55, 0.65]
    assert "mean(p/a:x.acc, p/a:y.acc, p/a:z.acc)" in r["detail"]
    assert verdict(win, [dict(rows[0], value=0.2)] + rows[1:])["status"] == "failed"  # 0.5
    assert verdict(win, rows[:2])["status"] == "missing"
    # a mean on one side of a compare: unpaired, even when each part shares a task hash
    c = {
        "compare": {
            "lhs": {"mean": parts},
            "op": ">",
            "rhs": {"mean": [dict(p, variant="b") for p in parts]},
        }
    }
    b_rows = [dict(r, variant="b", run_id="b", value=r["value"] - 0.2) for r in rows]
    r = verdict(c, rows + b_rows)
    assert r["status"] == "held" and r["test"] == "unpaired z"
    assert "unpaired: a mean of several metrics is compared as a whole" in r["detail"]


def test_all_fails_on_any_failure_and_is_missing_on_any_missing():
    held = cmp()
    absent = {"threshold": {"ref": {"variant": "zz", "task": "t", "metric": "acc"}}}
    absent["threshold"] |= {"op": ">", "value": 0.0}
    failing = {"threshold": {"ref": {"variant": "a", "task": "t", "metric": "acc"}}}
    failing["threshold"] |= {"op": ">", "value": 0.99}
    lookup = two(+3)
    assert verdict({"all": [held, held]}, lookup)["status"] == "held"
    assert verdict({"all": [held, absent]}, lookup)["status"] == "missing"
    assert verdict({"all": [absent, failing]}, lookup)["status"] == "failed"
    assert verdict({"all": [held, cmp(), cmp("<")]}, two(+1))["status"] == "inconclusive"


def test_seeds_mean_uses_sd_over_root_k():
    rows = []
    for s, (a, b) in enumerate(((0.62, 0.5), (0.58, 0.5), (0.60, 0.5))):
        rows += [
            m("a", a) | {"seed": s, "run_id": f"a{s}"},
            m("b", b) | {"seed": s, "run_id": f"b{s}"},
        ]
    check = {"seeds": {"seeds": [0, 1, 2], "min_held": 0, "compare": cmp()["compare"]}}
    row = verdict(check, rows)
    # diffs 0.12, 0.08, 0.10: mean 0.1, sd 0.02, se 0.02/√3 = 0.01155; n = 3 seeds
    assert row["status"] == "held" and row["n"] == 3
    assert row["stderr"] == pytest.approx(0.02 / math.sqrt(3))


def test_schema_of_the_new_keys(tmp_path):
    from claimbench.claims import load_claims_file
    from claimbench.errors import ConfigError
    from tests.helpers import write_claims

    def load(**entry):
        base = {"id": "c", "statement": "s", "scales": ["tiny"], "source": "Table 1"}
        return load_claims_file(write_claims(tmp_path, "p", [base | entry]))

    ni = cmp(">=", noninferiority=True, margin=0.02)
    assert load(kind="paper", check=ni)[1][0]["check"] == ni
    load(kind="pipeline", check=cmp(), source="x")
    load(not_attempted="needs a 70B model")
    mean = {"mean": [{"task": "x", "metric": "acc"}, {"task": "y", "metric": "acc"}]}
    load(kind="paper", check={"within": {"ref": mean, "value": 0.5, "tol_abs": 0.1}})
    with pytest.raises(ConfigError):  # a mean of one metric is not an average
        load(check={"within": {"ref": {"mean": mean["mean"][:1]}, "value": 0.5}})
    for bad, why in (
        ({"check": cmp(), "not_attempted": "x"}, "should not be valid"),
        ({"check": cmp(">=", noninferiority=True)}, "'margin_rel' is a required property"),
        ({"check": cmp(">=", noninferiority=True, margin=1, margin_rel=0.1)}, "should not be"),
        ({"check": cmp(">", noninferiority=True, margin=0.02)}, r"'>' is not one of"),
        ({"check": cmp(">=", noninferiority=True, margin=-0.02)}, "less than or equal to"),
        ({"check": cmp(">", margin_rel=0.02)}, "should not be valid"),
        ({"kind": "other"}, "is not one of"),
    ):
        with pytest.raises(ConfigError, match=why):
            load(**bad)
    with pytest.raises(ConfigError, match="'source' is a required property"):
        load_claims_file(
            write_claims(
                tmp_path, "q", [{"id": "c", "statement": "s", "scales": [], "kind": "paper"}]
            )
        )


# --------------------------------------------------------------------------- power


def test_mde_and_n_needed_against_the_closed_form():
    thr = {"threshold": {"ref": {"variant": "a", "task": "t", "metric": "acc"}}}
    thr["threshold"] |= {"op": ">", "value": 0.25, "effect": 0.07}
    row = verdict(thr, [m("a", 0.30, 0.05, n=100)])
    # MDE = (1.96 + 0.8416) · 0.05 = 0.14008; n needed = ceil(100 · (0.14008 / 0.07)²)
    # = ceil(100 · 4.00457) = 401
    assert row["mde"] == pytest.approx(0.14008)
    assert row["n"] == 100 and row["n_needed"] == 401
    assert row["status"] == "inconclusive"
    # a compare: se of the difference 0.05·√2, n the smaller side's n
    row = verdict(cmp(effect=0.2), [m("a", 0.6, 0.05, n=80), m("b", 0.5, 0.05, n=100)])
    assert row["mde"] == pytest.approx(2.8016 * DSE)
    assert row["n"] == 80 and row["n_needed"] == math.ceil(80 * (2.8016 * DSE / 0.2) ** 2)
    assert row["n_needed"] == 79  # 80 · 0.98112 = 78.49: the run was already large enough


# --------------------------------------------------------------------------- pairing


def store_scores(per_doc_rows):
    """``scores(run_id, task, metric)`` as the store answers it, from per-document rows
    ``(run_id, task, doc_id, metric, value)`` (what the samples files hold)."""

    def scores(run_id, task, metric):
        return {
            d: (v, None) for r, t, d, mm, v in per_doc_rows if (r, t, mm) == (run_id, task, metric)
        }

    return scores


def decode_runs(label_by_family: bool):
    """Two runs on the same 100 documents: ``a`` right on 45 of them, ``b`` on 51 (the 45 and 6
    more), exact match stored under task ``all``; per-document rows labelled by task (``all``)
    or, as the realign decode suite did, by family (``add``/``sub``)."""
    lookup = [
        m("a", 0.45, math.sqrt(0.45 * 0.55 / 99), task="all", metric="em", task_hash="H"),
        m("b", 0.51, math.sqrt(0.51 * 0.49 / 99), task="all", metric="em", task_hash="H"),
    ]
    docs = []
    for i in range(100):
        task = ("add" if i % 2 else "sub") if label_by_family else "all"
        docs.append(("a", task, i, "em", float(i < 45)))
        docs.append(("b", task, i, "em", float(i < 51)))
    return lookup, store_scores(docs)


EM_CHECK = {
    "compare": {
        "lhs": {"variant": "a", "task": "all", "metric": "em"},
        "op": ">",
        "rhs": {"variant": "b", "task": "all", "metric": "em"},
    }
}


def test_two_runs_on_the_same_documents_are_compared_paired():
    lookup, scores = decode_runs(label_by_family=False)
    row = verdict(EM_CHECK, lookup, scores)
    # 6 discordant documents, all against lhs: exact McNemar p = 2 / 2^6 = 0.03125 < 0.05
    assert mcnemar_exact(0, 6) == pytest.approx(0.03125)
    assert row["status"] == "failed", row["detail"]
    assert row["test"] == "McNemar exact over 100 docs"
    assert "discordant 0 vs 6" in row["detail"]
    # the same data unpaired: -0.06 ± 0.0706 is inconclusive
    unpaired = verdict(EM_CHECK, lookup)
    assert (
        unpaired["status"] == "inconclusive" and "unpaired: no per-document" in unpaired["detail"]
    )
    # with a margin the paired-difference z decides: se = sd(d)/√n over the 100 differences
    ni = {"compare": {**EM_CHECK["compare"], "op": ">=", "noninferiority": True, "margin": 0.02}}
    row = verdict(ni, lookup, scores)
    sd = math.sqrt((6 * 0.94**2 + 94 * 0.06**2) / 99)
    assert row["test"] == "paired z over 100 docs"
    assert row["stderr"] == pytest.approx(sd / 10)
    assert row["status"] == "inconclusive"  # -0.06 + 0.02 = -0.04 > -1.96 · 0.0239


def test_pairing_refused_with_its_reason_when_rows_are_labelled_by_family():
    lookup, scores = decode_runs(label_by_family=True)
    row = verdict(EM_CHECK, lookup, scores)
    assert row["test"] == "unpaired z"
    assert "unpaired: no per-document em scores under task 'all' in run a" in row["detail"]
    assert row["status"] == "inconclusive"


def test_pairing_refused_when_scores_do_not_reproduce_the_aggregate():
    lookup, scores = decode_runs(label_by_family=False)
    lookup[0] = lookup[0] | {"value": 0.46}
    row = verdict(EM_CHECK, lookup, scores)
    assert "do not reproduce its stored em" in row["detail"] and row["test"] == "unpaired z"


def test_pairing_refused_when_the_two_sides_scored_different_documents():
    """One task hash, but one side scored only part of the documents (e.g. a family filter that
    the hash does not cover): the aggregates each reproduce, yet a difference over the shared
    documents is not the difference of the stored numbers, so no pairing."""
    lookup, _ = decode_runs(label_by_family=False)
    docs = [("a", "all", i, "em", float(i < 45)) for i in range(100)]
    docs += [("b", "all", i, "em", float(i < 26)) for i in range(50)]  # 26/50 = 0.52
    lookup[1] = lookup[1] | {"value": 0.52}
    row = verdict(EM_CHECK, lookup, store_scores(docs))
    assert row["test"] == "unpaired z"
    assert "unpaired: different documents (100 vs 50, 50 shared)" in row["detail"]


def test_continuous_paired_scores_use_the_paired_z():
    lookup = [
        m("a", 0.0, 1.0, metric="score", task_hash="H"),
        m("b", 0.0, 1.0, metric="score", task_hash="H"),
    ]
    base = [math.sin(i) for i in range(50)]
    a = [x + 0.1 + (0.01 if i % 2 else -0.01) for i, x in enumerate(base)]
    lookup[0]["value"], lookup[1]["value"] = sum(a) / 50, sum(base) / 50
    rows = [("a", "t", i, "score", v) for i, v in enumerate(a)]
    rows += [("b", "t", i, "score", v) for i, v in enumerate(base)]
    check = {"compare": {**cmp()["compare"]}}
    for side in ("lhs", "rhs"):
        check["compare"][side] = {**check["compare"][side], "metric": "score"}
    row = verdict(check, lookup, store_scores(rows))
    # per-document differences 0.1 ± 0.01: se = sd/√50 ≈ 0.00142, far below the unpaired 1.41
    assert row["test"] == "paired z over 50 docs" and row["status"] == "held"
    assert row["stderr"] == pytest.approx(0.01 * math.sqrt(50 / 49) / math.sqrt(50), rel=1e-6)


# --------------------------------------------------------------------------- the repository

SOURCE = re.compile(r"abstract|§|Section|Table|Figure|Fig\.|Eq\.|Appendix|Algorithm")
README_REF = re.compile(r"methods/([A-Za-z0-9_]+)/README\.md#([^\s#]+)")


def github_slugs(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, a repeated
    heading gets -1, -2, ... (code blocks are not headings)."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        hit = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not hit:
            continue
        text = re.sub(r"`([^`]*)`", r"\1", hit.group(1))
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
        slug = "".join(
            ch for ch in text.strip().lower() if ch in " -_" or unicodedata.category(ch)[0] in "LN"
        ).replace(" ", "-")
        k = seen.get(slug, 0)
        seen[slug] = k + 1
        slugs.add(slug if k == 0 else f"{slug}-{k}")
    return slugs


def test_github_slugs():
    md = "# Verdicts\n## Scales: tiny & `small`\n```\n# not a heading\n```\n## Verdicts\n"
    assert github_slugs(md) == {"verdicts", "scales-tiny--small", "verdicts-1"}


def repo_claims(root: Path):
    for path in sorted((root / "methods").glob("*/claims.yaml")):
        for c in yaml.safe_load(path.read_text(encoding="utf-8"))["claims"]:
            yield path, c


def test_every_paper_claim_names_a_resolvable_source(root):
    bad, slugs = [], {}
    for path, c in repo_claims(root):
        where = f"{path.relative_to(root)}: {c['id']}"
        if "kind" not in c:
            bad.append(f"{where}: no kind (paper or pipeline)")
        src = c.get("source") or ""
        if re.search(r"\bissue\s*#?\d|\bspec\s*§", src, re.I):
            bad.append(f"{where}: source {src!r} cites an issue or the spec")
        if claim_kind(c) != "paper":
            continue
        refs = README_REF.findall(src)
        for pkg, anchor in refs:
            readme = root / "methods" / pkg / "README.md"
            if pkg not in slugs:
                text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
                slugs[pkg] = github_slugs(text)
            if anchor not in slugs[pkg]:
                bad.append(f"{where}: {readme.relative_to(root)} has no heading #{anchor}")
        if not refs and not SOURCE.search(src):
            bad.append(f"{where}: source {src!r} names no abstract/§/Table/Figure/Eq./Appendix")
    assert not bad, "\n".join(bad)


def compares(check):
    """Every ``compare`` inside a check (seeds and all included)."""
    if isinstance(check, dict):
        if "lhs" in check and "op" in check:
            yield check
        for v in check.values():
            yield from compares(v)
    elif isinstance(check, list):
        for v in check:
            yield from compares(v)


def test_non_strict_comparisons_are_non_inferiority_with_a_margin(root):
    """In the repository's claims, ``>=``/``<=`` between two metrics is a non-inferiority
    check with its margin; a directional claim uses ``>``/``<`` (the engine would read a bare
    ``>=`` as directional, which is not what the page would say)."""
    bad = [
        f"{path.relative_to(root)}: {c['id']}: {cmp['op']} without noninferiority"
        for path, c in repo_claims(root)
        for cmp in compares(c.get("check"))
        if cmp["op"] in (">=", "<=") and not cmp.get("noninferiority")
    ]
    assert not bad, "\n".join(bad)


def test_pipeline_checks_are_never_in_a_papers_totals(tmp_path):
    from claimbench.report import render_report
    from tests.test_report import build_store

    db = build_store(tmp_path)
    pages = {p.name: p.read_text(encoding="utf-8") for p in render_report(db, tmp_path / "r")}
    # the toy paper: one pipeline check (held) beside one held and one failed paper claim
    row = re.search(r'href="toy.html#verdicts-tiny">toy</a>(.*?)</tr>', pages["index.html"], re.S)
    held = re.search(r'data-state="held">(.*?)</td>', row.group(1)).group(1)
    assert ">1<" in held  # the paper claim alone, not 2
    counts = re.search(r'id="verdicts-tiny".*?<p class="counts">(.*?)</p>', pages["toy.html"], re.S)
    assert "held 1<" in counts.group(1) and "failed 1<" in counts.group(1)
