"""Claims as data, checked by small composable checks with confidence-aware verdicts.

A claims file (``methods/<pkg>/claims.yaml``, schema ``config/schema/claims.schema.yaml``)
lists a paper's headline numbers and, for each, a checkable statement. Checks:

* ``compare``: ``lhs op rhs`` between two stored metrics (directional ``>``/``<``, or
  non-inferiority ``>=``/``<=`` with a margin);
* ``threshold``: ``ref op value`` against a constant (e.g. chance level);
* ``within``: ``ref`` inside ``value ± (tol_abs + tol_rel * |value|)`` (a paper number);
* ``all``: held when every sub-check held, failed when one failed;
* ``seeds``: a ``compare`` repeated over several training seeds (refs pick a run by ``seed``):
  held when the mean over seeds of ``lhs - rhs`` holds (standard error: the spread of the
  per-seed differences, paired by seed, in quadrature with the evaluation sample's stderr, which
  the seeds share and which does not average out) **and** the per-seed comparison held for at least
  ``min_held`` seeds (e.g. "above on the mean of 3 seeds and in at least 2 of them").
  With ``threshold`` instead of ``compare``: the mean over seeds against the value (and at
  least ``min_held`` seeds on their own, default 0).
  ``{sfx}`` in a reference's variant names each seed's run (``psft{sfx}`` = ``psft``, ``psft-s1``,
  ``psft-s2``); ``shared: true`` marks a reference that is one run for every seed.

Verdicts (README "Verdicts"): ``held``, ``failed``, ``inconclusive``, ``missing`` and
``not attempted``. With a standard error and ``z`` from the scale's ``claims.z`` (default 1.96),
``gap`` the difference in the claimed direction: held when gap > z·se, failed when gap < -z·se,
inconclusive in between (the run cannot decide). A non-inferiority compare (``noninferiority:
true``, ``margin`` or ``margin_rel``; ops ``>=``/``<=``) tests gap + margin instead. ``within``
holds when the z-interval lies inside [paper - tol, paper + tol], fails when it lies entirely
outside. Without a stderr: the plain comparison. Every check stores its minimum detectable
effect (z + 0.8416)·se, its n and, given the paper's ``effect``, the n that 80% power needs.

Two runs of the same task with the same task hash are compared paired, per document; binary
per-document scores in a directional compare use McNemar's exact test on the discordant pairs,
other scores the paired-difference z. When the hashes match but pairing is impossible the
detail says why ("unpaired: ..."). ``missing`` means a referenced metric is not in the store at
that scale. Every verdict records the numbers it compared and how.
"""

from __future__ import annotations

import functools
import math
import operator
from pathlib import Path
from typing import Any

import yaml

from claimbench.errors import ConfigError
from claimbench.stats import (
    LN2,
    mcnemar_exact,
    mde,
    n_needed,
    normal_two_sided_alpha,
    paired_diff,
)

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema" / "claims.schema.yaml"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(encoding="utf-8"), Loader=_LOADER)


def _claim_label(data: Any, index: int) -> str:
    """``claim 'id' (claims.<i>)``: how an error names the claim it is in."""
    entry = data["claims"][index]
    cid = entry.get("id") if isinstance(entry, dict) else None
    return f"claim {cid!r} (claims.{index})" if isinstance(cid, str) else f"claims.{index}"


def load_claims_file(path: str | Path, name: str | None = None) -> tuple[dict, list[dict]]:
    """Read and validate one claims file; every error is one line that names the file (as
    ``name``, default ``path``) and, when it lies inside a claim, the claim's id:
    ``<file>: claim '<id>' (claims.<i>): <key>: <why>``.
    """
    from claimbench.config import check_values, first_error, read_yaml

    where = name or str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: <top level>: a {type(data).__name__}: a claims file is a mapping "
            "(paper, title, claims)"
        )
    claims = data.get("claims")
    check_values({k: v for k, v in data.items() if k != "claims"}, where)
    if isinstance(claims, list):
        for i, entry in enumerate(claims):
            check_values(entry, f"{where}: {_claim_label(data, i)}")
    err = first_error(data, _schema())
    if err is not None:
        keys = list(err.absolute_path)
        key = ".".join(str(k) for k in keys) or "<top level>"
        if len(keys) >= 2 and keys[0] == "claims" and isinstance(keys[1], int):
            where, key = f"{where}: {_claim_label(data, keys[1])}", ".".join(map(str, keys[2:]))
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{err.message}")
    ids = [c["id"] for c in claims]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"{where}: claims: duplicate id(s) {sorted(dup)}")
    paper = {k: data.get(k) for k in ("paper", "title", "url", "summary")}
    paper["package"] = Path(path).parent.name
    return paper, [dict(c, paper=data["paper"], file=where) for c in claims]


def load_claim_files(methods_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """Every ``<methods_dir>/*/claims.yaml``; two files naming one paper is an error."""
    papers, claims, seen = [], [], {}
    for path in sorted(Path(methods_dir).glob("*/claims.yaml")):
        p, c = load_claims_file(path)
        if p["paper"] in seen:
            raise ConfigError(
                f"{path}: paper: {p['paper']!r}: already claimed by {seen[p['paper']]} "
                "(one claims file per paper)"
            )
        seen[p["paper"]] = path
        papers.append(p)
        claims.extend(c)
    return papers, claims


class Missing(Exception):
    """A referenced metric is not in the store at this scale."""


def _find(ref: dict, paper: str, scale: str, lookup: list[dict]) -> dict:
    """The stored metric a reference names, or, for ``{mean: [ref, ...]}``, the mean of the
    referenced metrics (value = their mean, stderr = sqrt(sum se^2) / k when every part has
    one, n = the smallest n). A mean has no task hash, so a comparison with it is unpaired."""
    if "mean" in ref:
        parts = [_find(r, paper, scale, lookup) for r in ref["mean"]]
        k = len(parts)
        ses = [p["stderr"] for p in parts]
        ns = [p["n"] for p in parts if p.get("n") is not None]
        return {
            "scale": scale,
            "task": _ref_name(ref, paper),
            "metric": "mean",
            "value": sum(p["value"] for p in parts) / k,
            "stderr": None
            if any(s is None for s in ses)
            else math.sqrt(sum(s * s for s in ses)) / k,
            "n": min(ns) if ns else None,
            "task_hash": None,
            "run_id": None,
            "parts": parts,
        }
    want = {"paper": ref.get("paper", paper), "task": ref["task"], "metric": ref["metric"]}
    for key in ("method", "variant", "base_model", "suite", "seed"):
        if key in ref:
            want[key] = ref[key]
    hits = [
        m for m in lookup if m["scale"] == scale and all(m.get(k) == v for k, v in want.items())
    ]
    if not hits:
        raise Missing(_ref_name(ref, paper))
    if len(hits) > 1:
        raise ConfigError(
            f"claim reference {_ref_name(ref, paper)} matches {len(hits)} stored metrics at scale "
            f"{scale}; add variant/method/suite/seed to make it unique"
        )
    return hits[0]


def _ref_name(ref: dict, paper: str) -> str:
    if "mean" in ref:
        return "mean(" + ", ".join(_ref_name(r, paper) for r in ref["mean"]) + ")"
    parts = [ref.get("paper", paper)]
    parts += [ref[k] for k in ("method", "variant", "suite") if k in ref]
    seed = f"@seed{ref['seed']}" if "seed" in ref else ""
    return "/".join(parts) + f":{ref['task']}.{ref['metric']}{seed}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _decide(gap: float, se: float | None, z: float, margin: float = 0.0, strict=True) -> str:
    """Three-way verdict on ``gap`` (the difference in the claimed direction) plus a
    non-inferiority ``margin``: held when gap + margin > z·se, failed when it is < -z·se,
    inconclusive in between. Without a (non-zero) stderr: the plain comparison."""
    t = gap + margin
    if not se:
        return "held" if (t > 0 if strict else t >= 0) else "failed"
    if t > z * se:
        return "held"
    if t < -z * se:
        return "failed"
    return "inconclusive"


def _how(diff: float, se: float | None, z: float) -> str:
    if se is None:
        return f"diff {diff:+.4g} (no stderr: plain comparison)"
    if se == 0:
        return f"diff {diff:+.4g} (stderr 0: plain comparison)"
    return f"diff {diff:+.4g} ± {se:.3g} (z={z:g}, z·se = {z * se:.3g})"


def _combined_se(*ses: float | None) -> float | None:
    present = [s for s in ses if s is not None]
    return math.sqrt(sum(s * s for s in present)) if present else None


def _aggregates_to(scores: dict, row: dict) -> bool:
    vals = list(scores.values())
    if vals[0][1] is None:
        agg = sum(v for v, _ in vals) / len(vals)
    else:
        r = -sum(v for v, _ in vals) / sum(w for _, w in vals)
        agg = r / LN2 if row["metric"] == "bits_per_byte" else math.exp(r)
    return math.isclose(agg, row["value"], rel_tol=1e-6, abs_tol=1e-9)


def _paired(lhs: dict, rhs: dict, scores, legacy_margin: float) -> dict:
    """Pair ``lhs - rhs`` per document when both sides share a task hash.

    Returns ``{"paired": False}`` when the two sides are not the same documents (different
    task hash, or none), ``{"paired": False, "why": ...}`` when they are but pairing is
    impossible (said in the detail: never a silent fallback), else the paired difference
    ``{"paired": True, "diff", "se", "n", "log", "binary": (b, c) | None}``.
    """
    if "parts" in lhs or "parts" in rhs:
        return {"paired": False, "why": "a mean of several metrics is compared as a whole"}
    if not lhs.get("task_hash") or lhs.get("task_hash") != rhs.get("task_hash"):
        return {"paired": False}
    if (lhs["task"], lhs["metric"]) != (rhs["task"], rhs["metric"]):
        return {"paired": False, "why": "same task hash but different task or metric"}
    if scores is None:
        return {"paired": False, "why": "no per-document scores available"}
    a = scores(lhs["run_id"], lhs["task"], lhs["metric"])
    b = scores(rhs["run_id"], rhs["task"], rhs["metric"])
    for side, row in ((a, lhs), (b, rhs)):
        if not side:
            return {
                "paired": False,
                "why": f"no per-document {row['metric']} scores under task {row['task']!r} "
                f"in run {row['run_id']}",
            }
        # Pair only when the per-document scores reproduce the stored aggregates exactly.
        if not _aggregates_to(side, row):
            return {
                "paired": False,
                "why": f"per-document scores of run {row['run_id']} do not reproduce its "
                f"stored {row['metric']}",
            }
    if set(a) != set(b):  # one task hash, yet not the same documents scored on each side
        return {
            "paired": False,
            "why": f"different documents ({len(a)} vs {len(b)}, {len(set(a) & set(b))} shared)",
        }
    name = lhs["metric"]
    log = name.endswith("perplexity")
    if log and legacy_margin:
        return {"paired": False, "why": "a margin in perplexity units does not carry to log"}
    res = paired_diff(a, b)
    if res is None:
        return {"paired": False, "why": "fewer than 2 shared documents"}
    diff, se, n = res
    if name == "bits_per_byte":
        diff, se = diff / LN2, se / LN2
    binary = None
    docs = set(a) & set(b)
    if all(a[k][1] is None and a[k][0] in (0, 1) and b[k][0] in (0, 1) for k in docs):
        binary = (
            sum(a[k][0] == 1 and b[k][0] == 0 for k in docs),
            sum(a[k][0] == 0 and b[k][0] == 1 for k in docs),
        )
    return {"paired": True, "diff": diff, "se": se, "n": n, "log": log, "binary": binary}


def _margin_text(margin: float) -> str:
    """`` + 0.05`` / `` - 0.05`` / nothing: a margin added to a right-hand side, as text."""
    if not margin:
        return ""
    return f" {'+' if margin > 0 else '-'} {abs(margin):g}"


def _ni_margin(spec: dict, rhs_value: float) -> float:
    """A non-inferiority check's margin m > 0 in the metric's units (``margin``, or
    ``margin_rel`` times |rhs|); 0 for a directional check."""
    if not spec.get("noninferiority"):
        return 0.0
    if "margin" in spec:
        return float(spec["margin"])
    return abs(rhs_value) * float(spec.get("margin_rel", 0.0))


def _compare(spec: dict, paper: str, scale: str, lookup, scores, z: float) -> dict:
    """One ``compare``: its verdict and numbers (see :func:`run_check`)."""
    lhs = _find(spec["lhs"], paper, scale, lookup)
    rhs = _find(spec["rhs"], paper, scale, lookup)
    op = spec["op"]
    sign = 1.0 if op in (">", ">=") else -1.0
    ni = bool(spec.get("noninferiority"))
    legacy = 0.0 if ni else float(spec.get("margin", 0.0))  # lhs op rhs + margin
    m = _ni_margin(spec, rhs["value"])
    strict = ni or op in (">", "<")
    pair = _paired(lhs, rhs, scores, legacy)
    note = ""
    if pair["paired"]:
        n = pair["n"]
        if pair["log"]:
            # on log perplexity (nats per unit): diff and se as given; the margin and the
            # power are carried to the metric's units through rhs (d ppl ≈ ppl · d log ppl)
            diff, se = pair["diff"], pair["se"]
            unit = abs(rhs["value"]) or 1.0
            if m:
                r = m / unit
                m_eff = math.log1p(r) if sign < 0 else -math.log1p(-min(r, 0.999999))
            else:
                m_eff = 0.0
            se_units = se * unit
            test = f"paired z over {n} docs, on log {lhs['metric']}"
        else:
            diff, se, m_eff, se_units = pair["diff"] - legacy, pair["se"], m, pair["se"]
            test = f"paired z over {n} docs"
        status = _decide(sign * diff, se, z, m_eff, strict)
        if pair["binary"] is not None and not m and not legacy and se:
            b, c = pair["binary"]
            p = mcnemar_exact(b, c)
            wins, losses = (b, c) if sign > 0 else (c, b)
            significant = p < normal_two_sided_alpha(z)
            status = (
                "inconclusive"
                if not significant or wins == losses
                else ("held" if wins > losses else "failed")
            )
            test = f"McNemar exact over {n} docs"
            note = f"; discordant {b} vs {c}, two-sided p = {p:.3g}"
    else:
        n = min((x for x in (lhs.get("n"), rhs.get("n")) if x is not None), default=None)
        diff = lhs["value"] - (rhs["value"] + legacy)
        se = _combined_se(lhs["stderr"], rhs["stderr"])
        se_units, m_eff = se, m
        status = _decide(sign * diff, se, z, m, strict)
        test = "unpaired z" if se else "plain comparison"
        if pair.get("why"):
            note = f"; unpaired: {pair['why']}"
    how = _how(diff, se, z)
    if ni:
        how += f"; non-inferiority, margin {m:.4g}" + (
            f" (log scale {m_eff:.4g})" if m_eff != m else ""
        )
    return {
        "lhs": lhs,
        "rhs": rhs,
        "status": status,
        "estimate": lhs["value"] - rhs["value"] - legacy,
        "diff": diff,
        "se": se_units,
        "n": n,
        "test": test,
        "how": how + f" [{test}]" + note,
        "margin": m if ni else None,
    }


def _power(res: dict, z: float, effect: float | None) -> dict:
    se = res.get("se") or None
    return {"mde": mde(se, z), "n_needed": n_needed(res.get("n"), se, z, effect)}


def _result(status, observed, detail, **kw) -> dict:
    out = {
        "status": status,
        "observed": observed,
        "detail": detail,
        "test": None,
        "estimate": None,
        "stderr": None,
        "n": None,
        "mde": None,
        "n_needed": None,
        "noninferiority_margin": None,
    }
    out.update(kw)
    return out


def evaluate(
    check: dict, paper: str, scale: str, lookup: list[dict], z: float, scores=None
) -> dict:
    """Verdict of one check: ``{status, observed, detail, test, estimate, stderr, n, mde,
    n_needed, noninferiority_margin}``; raises :class:`Missing` when data is absent.

    ``status`` is held / failed / inconclusive; ``estimate ± stderr`` is the compared quantity
    (the difference for a compare, the value for threshold/within, the mean over seeds);
    ``mde`` = (z + 0.8416)·stderr, and ``n_needed`` the n that 80% power needs for the check's
    ``effect`` (documents, or seeds for a seeds check).
    """
    kind, spec = next(iter(check.items()))
    if kind == "compare":
        r = _compare(spec, paper, scale, lookup, scores, z)
        margin = 0.0 if spec.get("noninferiority") else spec.get("margin", 0.0)
        observed = {
            _ref_name(spec["lhs"], paper): [r["lhs"]["value"], r["lhs"]["stderr"]],
            _ref_name(spec["rhs"], paper): [r["rhs"]["value"], r["rhs"]["stderr"]],
        }
        detail = (
            f"{_ref_name(spec['lhs'], paper)} = {_fmt(r['lhs']['value'])} {spec['op']} "
            f"{_ref_name(spec['rhs'], paper)} = {_fmt(r['rhs']['value'])}"
            + _margin_text(margin)
            + f"; {r['how']}"
            + (f" (diff = lhs - rhs{_margin_text(-margin)})" if margin else "")
        )
        return _result(
            r["status"],
            observed,
            detail,
            test=r["test"],
            estimate=r["estimate"],
            stderr=r["se"],
            n=r["n"],
            noninferiority_margin=r["margin"],
            **_power(r, z, spec.get("effect")),
        )
    if kind == "threshold":
        ref = _find(spec["ref"], paper, scale, lookup)
        sign = 1.0 if spec["op"] in (">", ">=") else -1.0
        diff, se = ref["value"] - spec["value"], ref["stderr"]
        status = _decide(sign * diff, se, z, 0.0, spec["op"] in (">", "<"))
        observed = {_ref_name(spec["ref"], paper): [ref["value"], ref["stderr"]]}
        detail = (
            f"{_ref_name(spec['ref'], paper)} = {_fmt(ref['value'])} {spec['op']} "
            f"{spec['value']:g}; {_how(diff, se, z)}"
        )
        r = {"se": se, "n": ref.get("n")}
        return _result(
            status,
            observed,
            detail,
            test="z against a constant" if se else "plain comparison",
            estimate=ref["value"],
            stderr=se,
            n=ref.get("n"),
            **_power(r, z, spec.get("effect")),
        )
    if kind == "within":
        ref = _find(spec["ref"], paper, scale, lookup)
        t = spec["value"]
        tol = spec.get("tol_abs", 0.0) + spec.get("tol_rel", 0.0) * abs(t)
        v, se = ref["value"], ref["stderr"] or 0.0
        lo, hi = v - z * se, v + z * se
        if lo >= t - tol and hi <= t + tol:
            status = "held"
        elif hi < t - tol or lo > t + tol:
            status = "failed"
        else:
            status = "inconclusive"
        observed = {_ref_name(spec["ref"], paper): [ref["value"], ref["stderr"]]}
        span = f"[{lo:.4g}, {hi:.4g}]" if se else f"{v:.4g} (no stderr: plain comparison)"
        detail = (
            f"{_ref_name(spec['ref'], paper)} = {_fmt(v)} vs paper {t:g} ± tol {tol:.4g} "
            f"= [{t - tol:.4g}, {t + tol:.4g}]; ours {span}"
            + (f" (z={z:g}·se {se:.3g})" if se else "")
        )
        r = {"se": ref["stderr"], "n": ref.get("n")}
        return _result(
            status,
            observed,
            detail,
            test="z-interval inside the tolerance" if se else "plain comparison",
            estimate=v,
            stderr=ref["stderr"],
            n=ref.get("n"),
            **_power(r, z, spec.get("effect")),
        )
    if kind == "seeds":
        return _check_seeds(spec, paper, scale, lookup, z, scores)
    if kind == "all":
        observed, details, subs = {}, [], []
        for sub in spec:
            try:
                r = evaluate(sub, paper, scale, lookup, z, scores)
            except Missing as m:
                r = _result("missing", {}, f"no stored metric {m} at scale {scale}")
            observed |= r["observed"]
            details.append(f"{r['status']}: {r['detail']}")
            subs.append(r)
        states = [r["status"] for r in subs]
        if "failed" in states:
            status = "failed"
        elif "missing" in states:
            status = "missing"
        elif all(s == "held" for s in states):
            status = "held"
        else:
            status = "inconclusive"
        # power of the least powered part (largest MDE)
        weakest = max(subs, key=lambda r: -1.0 if r["mde"] is None else r["mde"])
        return _result(
            status,
            observed,
            " | ".join(details),
            test=f"all of {len(subs)}",
            n=weakest["n"],
            mde=weakest["mde"],
            n_needed=max((r["n_needed"] for r in subs if r["n_needed"]), default=None),
        )
    raise ConfigError(f"unknown check kind {kind!r}")


def run_check(
    check: dict, paper: str, scale: str, lookup: list[dict], z: float, scores=None
) -> tuple[str, dict, str]:
    """(status, observed values, detail); raises Missing when data is absent."""
    r = evaluate(check, paper, scale, lookup, z, scores)
    return r["status"], r["observed"], r["detail"]


def _seed_ref(ref: dict, seed: int, sfx: str) -> dict:
    """One seed's run of a ``seeds`` reference: ``{sfx}`` in the variant becomes ``""`` for the
    first seed listed and ``-s<seed>`` for the others (the workflows' naming: ``psft``,
    ``psft-s1``, ``psft-s2-rl``), which alone picks the run; a ``shared`` reference (one run
    serving every seed, e.g. the teacher) is used as written; otherwise the run is picked by
    its ``seed``."""
    if "mean" in ref:
        return {"mean": [_seed_ref(r, seed, sfx) for r in ref["mean"]]}
    ref = dict(ref)
    if ref.pop("shared", False):
        return ref
    if "{sfx}" in ref.get("variant", ""):
        # the variant names the seed's run; its evaluation records carry the scale's
        # evaluation seed, not the training seed, so the seed is not matched
        return dict(ref, variant=ref["variant"].replace("{sfx}", sfx))
    return dict(ref, seed=seed)


def _check_seeds_threshold(spec: dict, paper: str, scale: str, lookup, z: float) -> dict:
    """``threshold`` on the mean over seeds (se = sd/√k), three-way, and at least
    ``min_held`` (default 0) seeds over the threshold on their own."""
    th, seeds, need = spec["threshold"], spec["seeds"], spec.get("min_held", 0)
    vals, observed = [], {}
    for seed in seeds:
        ref = _seed_ref(th["ref"], seed, "" if seed == seeds[0] else f"-s{seed}")
        hit = _find(ref, paper, scale, lookup)
        vals.append(hit["value"])
        observed[_ref_name(ref, paper)] = [hit["value"], hit["stderr"]]
    n = len(vals)
    mean = sum(vals) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else None
    wins = sum(OPS[th["op"]](v, th["value"]) for v in vals)
    sign = 1.0 if th["op"] in (">", ">=") else -1.0
    mean_status = _decide(sign * (mean - th["value"]), se, z, 0.0, th["op"] in (">", "<"))
    if mean_status == "failed" or wins < need:
        status = "failed"
    else:
        status = mean_status
    detail = (
        f"mean of {_ref_name(th['ref'], paper)} over seeds {list(seeds)} = {_fmt(mean)}"
        + (f" (se {se:.3g})" if se is not None else "")
        + f" {th['op']} {th['value']:g}: {mean_status}; per seed "
        + ", ".join(f"{s}: {_fmt(v)}" for s, v in zip(seeds, vals, strict=True))
        + f"; {wins}/{n} seeds over the threshold"
        + (f" (need {need})" if need else "")
    )
    return _result(
        status,
        observed,
        detail,
        test=f"mean over {n} seeds, se = sd/√{n}",
        estimate=mean,
        stderr=se,
        n=n,
        **_power({"se": se, "n": n}, z, th.get("effect")),
    )


def _check_seeds(spec: dict, paper: str, scale: str, lookup, z: float, scores) -> dict:
    """``compare`` per seed, then on the mean over seeds (paired by seed) and a count of wins;
    or a ``threshold`` on the mean over seeds."""
    if "threshold" in spec:
        return _check_seeds_threshold(spec, paper, scale, lookup, z)
    cmp, seeds, need = spec["compare"], spec["seeds"], spec.get("min_held", len(spec["seeds"]))
    ni = bool(cmp.get("noninferiority"))
    legacy = 0.0 if ni else cmp.get("margin", 0.0)
    sign = 1.0 if cmp["op"] in (">", ">=") else -1.0
    diffs, ses, rhs_vals, observed, per_seed, states = [], [], [], {}, [], []
    for seed in seeds:
        sfx = "" if seed == seeds[0] else f"-s{seed}"
        sub = dict(cmp, lhs=_seed_ref(cmp["lhs"], seed, sfx), rhs=_seed_ref(cmp["rhs"], seed, sfx))
        r = _compare(sub, paper, scale, lookup, scores, z)
        diffs.append(r["estimate"])
        ses.append(r["se"])
        rhs_vals.append(r["rhs"]["value"])
        states.append(r["status"])
        observed[_ref_name(sub["lhs"], paper)] = [r["lhs"]["value"], r["lhs"]["stderr"]]
        observed[_ref_name(sub["rhs"], paper)] = [r["rhs"]["value"], r["rhs"]["stderr"]]
        tag = f" [{r['test']}]" if r["test"] not in ("unpaired z", "plain comparison") else ""
        per_seed.append(f"seed {seed}: {diffs[-1]:+.4g} {r['status']}{tag}")
    n = len(diffs)
    mean = sum(diffs) / n
    # Two sources of noise: the spread over seeds (training), and the evaluation sample, which
    # the seeds share (the same test documents), so it does not shrink with n: its stderr is
    # the seeds' mean stderr, added in quadrature to the seed spread's.
    se_seed = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None
    se_eval = sum(ses) / n if all(x is not None for x in ses) else None
    se = _combined_se(se_seed, se_eval)
    m = _ni_margin(cmp, sum(rhs_vals) / n)
    strict = ni or cmp["op"] in (">", "<")
    mean_status = _decide(sign * mean, se, z, m, strict)
    wins, losses = states.count("held"), states.count("failed")
    if mean_status == "failed" or n - losses < need:
        status = "failed"
    elif mean_status == "held" and wins >= need:
        status = "held"
    else:
        status = "inconclusive"
    how = _how(mean, se, z) + (f"; non-inferiority, margin {m:.4g}" if ni else "")
    detail = (
        f"{_ref_name(cmp['lhs'], paper)} {cmp['op']} {_ref_name(cmp['rhs'], paper)}"
        + _margin_text(legacy)
        + f" over seeds {list(seeds)}: mean {how} ({mean_status})"
        + (f" (diff = lhs - rhs{_margin_text(-legacy)})" if legacy else "")
        + "; "
        f"per-seed comparison held in {wins}/{n}, failed in {losses} (need {need} held): "
        + ", ".join(per_seed)
    )
    return _result(
        status,
        observed,
        detail,
        test=f"mean over {n} seeds (paired by seed)",
        estimate=mean,
        stderr=se,
        n=n,
        noninferiority_margin=m if ni else None,
        **_power({"se": se, "n": n}, z, cmp.get("effect")),
    )


def setup_gate(claim: dict, scale: str, lookup, z: float, scores=None) -> dict | None:
    """A claim's ``requires`` (a setup condition, e.g. "the teacher beats the student by at
    least 3 standard errors"): its check evaluated at the condition's own ``z``. ``None`` when
    it holds (the claim is checked); otherwise the claim's verdict: ``inconclusive`` with the
    condition's reason and numbers (``missing`` when the setup's metrics are absent). Decided
    from the setup's runs only, never from the claim's result."""
    req = claim.get("requires")
    if not req:
        return None
    try:
        r = evaluate(req["check"], claim["paper"], scale, lookup, req["z"], scores)
    except Missing as m:
        return _result("missing", {}, f"setup condition ({req['reason']}): no stored metric {m}")
    if r["status"] == "held":
        return None
    return _result(
        "inconclusive",
        r["observed"],
        f"setup condition not met ({req['reason']}; z = {req['z']:g}): {r['detail']}",
        test=f"setup condition: {r['test']}",
        estimate=r.get("estimate"),
        stderr=r.get("stderr"),
        n=r.get("n"),
    )


def claim_kind(claim: dict) -> str:
    """``paper`` (a statement the paper makes; the default) or ``pipeline`` (a property of this
    implementation, never counted in a paper's totals)."""
    return claim.get("kind", "paper")


def check_all(
    claims: list[dict], lookup: list[dict], scales: list[str], z: float = 1.96, scores=None
) -> list[dict[str, Any]]:
    """One verdict row per (scale present in the store, claim applicable at that scale), plus
    a ``not attempted`` row at each of its scales for a claim that no scale of ours measures.

    ``scores(run_id, task, metric)`` may return per-document scores ``{doc: (value, weight)}``
    so that comparisons of two runs on the same documents are paired.
    """
    rows = []
    base_of = {}
    for c in claims:
        base_of[id(c)] = {
            "paper": c["paper"],
            "claim_id": c["id"],
            "kind": claim_kind(c),
            "source": c.get("source"),
        }
    for scale in scales:
        for c in claims:
            if scale not in c.get("scales", []) or "check" not in c:
                continue
            try:
                r = setup_gate(c, scale, lookup, z, scores) or evaluate(
                    c["check"], c["paper"], scale, lookup, z, scores
                )
            except Missing as m:
                r = _result("missing", {}, f"no stored metric {m} at scale {scale}")
            except ConfigError as e:  # name the file and the claim the error comes from
                where = f"{c['file']}: " if c.get("file") else ""
                raise ConfigError(f"{where}claim {c.get('id')!r}: {e}") from None
            rows.append({"scale": scale, **base_of[id(c)], **r})
    for c in claims:
        if "not_attempted" in c and "check" not in c:
            for scale in c.get("scales", []):
                r = _result("not attempted", {}, f"not attempted: {c['not_attempted']}")
                rows.append({"scale": scale, **base_of[id(c)], **r})
    return rows
