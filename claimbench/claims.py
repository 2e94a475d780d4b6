"""Claims as data, checked by small composable checks with confidence-aware verdicts.

A claims file (``methods/<pkg>/claims.yaml``, schema ``config/schema/claims.schema.yaml``)
lists a paper's headline numbers and, for each, a checkable statement. Checks:

* ``compare``: ``lhs op rhs (+ margin)`` between two stored metrics;
* ``threshold``: ``ref op value`` against a constant (e.g. chance level);
* ``within``: ``|ref - value| <= tol_abs + tol_rel * |value|`` (a paper number at paper scale);
* ``all``: every sub-check held;
* ``seeds``: a ``compare`` repeated over several training seeds (refs pick a run by ``seed``):
  held when the mean over seeds of ``lhs - rhs`` holds (standard error: the spread of the
  per-seed differences, paired by seed, in quadrature with the evaluation sample's stderr, which
  the seeds share and which does not average out) **and** the per-seed comparison held for at least
  ``min_held`` seeds (e.g. "above on the mean of 3 seeds and in at least 2 of them").
  With ``threshold`` instead of ``compare``: the mean over seeds against the value (and at
  least ``min_held`` seeds on their own, default 0).
  ``{sfx}`` in a reference's variant names each seed's run (``psft{sfx}`` = ``psft``, ``psft-s1``,
  ``psft-s2``); ``shared: true`` marks a reference that is one run for every seed.

Verdicts are confidence-aware: where the suite gives a standard error, ``held`` needs the
inequality to hold by at least ``z`` standard errors (``z`` from the scale's ``claims.z``,
default 1.96); a direction that holds only inside the noise is ``failed`` with the detail
"not significant". Two runs of the same task on the same documents (same task hash) are
compared paired, per document, when per-sample scores are stored; otherwise the two
standard errors are combined as independent. ``missing`` means a referenced metric is not in the store at
that scale. Every verdict records the numbers it compared and how.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any

import yaml

from claimbench.errors import ConfigError
from claimbench.stats import LN2, paired_diff

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema" / "claims.schema.yaml"


def load_claims_file(path: str | Path) -> tuple[dict, list[dict]]:
    from claimbench.config import read_yaml, validate

    data = read_yaml(path)
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    validate(data, schema, str(path))
    ids = [c["id"] for c in data["claims"]]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"{path}: claims: duplicate id(s) {sorted(dup)}")
    paper = {k: data.get(k) for k in ("paper", "title", "url", "summary")}
    paper["package"] = Path(path).parent.name
    claims = [dict(c, paper=data["paper"]) for c in data["claims"]]
    return paper, claims


def load_claim_files(methods_dir: str | Path) -> tuple[list[dict], list[dict]]:
    papers, claims = [], []
    for path in sorted(Path(methods_dir).glob("*/claims.yaml")):
        p, c = load_claims_file(path)
        papers.append(p)
        claims.extend(c)
    return papers, claims


class Missing(Exception):
    """A referenced metric is not in the store at this scale."""


def _find(ref: dict, paper: str, scale: str, lookup: list[dict]) -> dict:
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
    parts = [ref.get("paper", paper)]
    parts += [ref[k] for k in ("method", "variant", "suite") if k in ref]
    seed = f"@seed{ref['seed']}" if "seed" in ref else ""
    return "/".join(parts) + f":{ref['task']}.{ref['metric']}{seed}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _verdict(diff: float, se: float | None, op: str, z: float) -> tuple[bool, str]:
    """Does ``diff = a - b`` support ``a op b``, given its standard error?

    Strict ops need the difference in the claimed direction to exceed ``z`` standard errors
    (``>``: diff > z·se). Non-strict ops hold unless the data show the opposite beyond the
    noise (``>=``: diff >= -z·se). Without a stderr this is the plain comparison.
    """
    gap = diff if op in (">", ">=") else -diff  # positive = in the claimed direction
    s = se or 0.0
    held = gap > z * s if op in (">", "<") else gap >= -z * s
    if se is None:
        return held, f"diff {diff:+.4g} (no stderr: plain comparison)"
    text = f"diff {diff:+.4g} ± {se:.3g} (z={z:g}, z·se = {z * s:.3g})"
    if OPS[op](diff, 0.0) and not held:
        text += ": right direction, not significant"
    return held, text


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


def _paired(lhs: dict, rhs: dict, margin: float, scores) -> tuple[float, float, str] | None:
    """Paired difference lhs - rhs over the same documents, when per-document scores exist.

    Two runs of one task with the same task hash scored the same documents, so their
    difference has a much smaller standard error than two independent estimates.
    """
    if scores is None or (lhs["task"], lhs["metric"]) != (rhs["task"], rhs["metric"]):
        return None
    if not lhs.get("task_hash") or lhs.get("task_hash") != rhs.get("task_hash"):
        return None
    a = scores(lhs["run_id"], lhs["task"], lhs["metric"])
    b = scores(rhs["run_id"], rhs["task"], rhs["metric"])
    # Pair only when the per-document scores reproduce the stored aggregates exactly.
    if not (a and b and _aggregates_to(a, lhs) and _aggregates_to(b, rhs)):
        return None
    res = paired_diff(a, b)
    if res is None:
        return None
    diff, se, n = res
    name = lhs["metric"]
    if name == "bits_per_byte":
        diff, se = diff / LN2, se / LN2
    elif name.endswith("perplexity"):
        if margin:
            return None  # a margin in perplexity units does not carry to the log scale
        return diff, se, f"paired over {n} docs, on log {name}"
    return diff - margin, se, f"paired over {n} docs"


def _margin_text(margin: float) -> str:
    """`` + 0.05`` / `` - 0.05`` / nothing: a margin added to a right-hand side, as text."""
    if not margin:
        return ""
    return f" {'+' if margin > 0 else '-'} {abs(margin):g}"


def _compare(spec: dict, paper: str, scale: str, lookup, scores):
    """(lhs, rhs, diff, its stderr, a note) of ``lhs - (rhs + margin)``: paired over the same
    documents when per-document scores allow, else from the two stored stderrs."""
    lhs = _find(spec["lhs"], paper, scale, lookup)
    rhs = _find(spec["rhs"], paper, scale, lookup)
    margin = spec.get("margin", 0.0)
    paired = _paired(lhs, rhs, margin, scores)
    if paired:
        return lhs, rhs, paired[0], paired[1], f" [{paired[2]}]"
    diff = lhs["value"] - (rhs["value"] + margin)
    return lhs, rhs, diff, _combined_se(lhs["stderr"], rhs["stderr"]), ""


def run_check(
    check: dict, paper: str, scale: str, lookup: list[dict], z: float, scores=None
) -> tuple[bool, dict, str]:
    """(held, observed values, detail); raises Missing when data is absent."""
    kind, spec = next(iter(check.items()))
    if kind == "compare":
        lhs, rhs, diff, se, tag = _compare(spec, paper, scale, lookup, scores)
        held, how = _verdict(diff, se, spec["op"], z)
        how += tag
        margin = spec.get("margin", 0.0)
        observed = {
            _ref_name(spec["lhs"], paper): [lhs["value"], lhs["stderr"]],
            _ref_name(spec["rhs"], paper): [rhs["value"], rhs["stderr"]],
        }
        detail = (
            f"{_ref_name(spec['lhs'], paper)} = {_fmt(lhs['value'])} {spec['op']} "
            f"{_ref_name(spec['rhs'], paper)} = {_fmt(rhs['value'])}"
            + _margin_text(margin)
            + f"; {how}"
            + (f" (diff = lhs - rhs{_margin_text(-margin)})" if margin else "")
        )
        return held, observed, detail
    if kind == "threshold":
        ref = _find(spec["ref"], paper, scale, lookup)
        held, how = _verdict(ref["value"] - spec["value"], ref["stderr"], spec["op"], z)
        observed = {_ref_name(spec["ref"], paper): [ref["value"], ref["stderr"]]}
        detail = f"{_ref_name(spec['ref'], paper)} = {_fmt(ref['value'])} {spec['op']} {spec['value']:g}; {how}"
        return held, observed, detail
    if kind == "within":
        ref = _find(spec["ref"], paper, scale, lookup)
        tol = spec.get("tol_abs", 0.0) + spec.get("tol_rel", 0.0) * abs(spec["value"])
        gap = abs(ref["value"] - spec["value"])
        se = ref["stderr"] or 0.0
        held = gap <= tol + z * se
        observed = {_ref_name(spec["ref"], paper): [ref["value"], ref["stderr"]]}
        detail = (
            f"{_ref_name(spec['ref'], paper)} = {_fmt(ref['value'])} vs paper {spec['value']:g}: "
            f"|gap| {gap:.4g} {'<=' if held else '>'} tol {tol:.4g}"
            + (f" + {z:g}·se {se:.3g}" if se else "")
        )
        return held, observed, detail
    if kind == "seeds":
        return _check_seeds(spec, paper, scale, lookup, z, scores)
    if kind == "all":
        observed, details, held = {}, [], True
        for sub in spec:
            h, o, d = run_check(sub, paper, scale, lookup, z, scores)
            held &= h
            observed |= o
            details.append(("held: " if h else "failed: ") + d)
        return held, observed, " | ".join(details)
    raise ConfigError(f"unknown check kind {kind!r}")


def _seed_ref(ref: dict, seed: int, sfx: str) -> dict:
    """One seed's run of a ``seeds`` reference: ``{sfx}`` in the variant becomes ``""`` for the
    first seed listed and ``-s<seed>`` for the others (the workflows' naming: ``psft``,
    ``psft-s1``, ``psft-s2-rl``), which alone picks the run; a ``shared`` reference (one run
    serving every seed, e.g. the teacher) is used as written; otherwise the run is picked by
    its ``seed``."""
    ref = dict(ref)
    if ref.pop("shared", False):
        return ref
    if "{sfx}" in ref.get("variant", ""):
        # the variant names the seed's run; its evaluation records carry the scale's
        # evaluation seed, not the training seed, so the seed is not matched
        return dict(ref, variant=ref["variant"].replace("{sfx}", sfx))
    return dict(ref, seed=seed)


def _check_seeds_threshold(spec: dict, paper: str, scale: str, lookup):
    """``threshold`` on the mean over seeds (the plain mean, as "assert on means over 3 seeds"
    asks), and at least ``min_held`` (default 0) seeds over the threshold on their own."""
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
    held = OPS[th["op"]](mean, th["value"]) and wins >= need
    detail = (
        f"mean of {_ref_name(th['ref'], paper)} over seeds {list(seeds)} = {_fmt(mean)}"
        + (f" (se {se:.3g})" if se is not None else "")
        + f" {th['op']} {th['value']:g}; per seed "
        + ", ".join(f"{s}: {_fmt(v)}" for s, v in zip(seeds, vals, strict=True))
        + f"; {wins}/{n} seeds over the threshold"
        + (f" (need {need})" if need else "")
    )
    return held, observed, detail


def _check_seeds(spec: dict, paper: str, scale: str, lookup, z: float, scores):
    """``compare`` per seed, then on the mean over seeds (paired by seed) and a count of wins;
    or a ``threshold`` on the mean over seeds."""
    if "threshold" in spec:
        return _check_seeds_threshold(spec, paper, scale, lookup)
    cmp, seeds, need = spec["compare"], spec["seeds"], spec.get("min_held", len(spec["seeds"]))
    margin = cmp.get("margin", 0.0)
    diffs, ses, wins, observed, per_seed = [], [], 0, {}, []
    for seed in seeds:
        sfx = "" if seed == seeds[0] else f"-s{seed}"
        sub = dict(cmp, lhs=_seed_ref(cmp["lhs"], seed, sfx), rhs=_seed_ref(cmp["rhs"], seed, sfx))
        lhs, rhs, diff, d_se, tag = _compare(sub, paper, scale, lookup, scores)
        held, _ = _verdict(diff, d_se, cmp["op"], z)
        diffs.append(lhs["value"] - rhs["value"] - margin)
        ses.append(d_se)
        wins += held
        observed[_ref_name(sub["lhs"], paper)] = [lhs["value"], lhs["stderr"]]
        observed[_ref_name(sub["rhs"], paper)] = [rhs["value"], rhs["stderr"]]
        per_seed.append(f"seed {seed}: {diffs[-1]:+.4g} {'held' if held else 'failed'}{tag}")
    n = len(diffs)
    mean = sum(diffs) / n
    # Two sources of noise: the spread over seeds (training), and the evaluation sample, which
    # the seeds share (the same test documents), so it does not shrink with n: its stderr is
    # the seeds' mean stderr, added in quadrature to the seed spread's.
    se_seed = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None
    se_eval = sum(ses) / n if all(x is not None for x in ses) else None
    se = _combined_se(se_seed, se_eval)
    mean_held, how = _verdict(mean, se, cmp["op"], z)
    held = mean_held and wins >= need
    detail = (
        f"{_ref_name(cmp['lhs'], paper)} {cmp['op']} {_ref_name(cmp['rhs'], paper)}"
        + _margin_text(margin)
        + f" over seeds {list(seeds)}: mean {how} ({'held' if mean_held else 'failed'})"
        + (f" (diff = lhs - rhs{_margin_text(-margin)})" if margin else "")
        + "; "
        f"per-seed comparison held in {wins}/{n} (need {need}): " + ", ".join(per_seed)
    )
    return held, observed, detail


def check_all(
    claims: list[dict], lookup: list[dict], scales: list[str], z: float = 1.96, scores=None
) -> list[dict[str, Any]]:
    """One verdict row per (scale present in the store, claim applicable at that scale).

    ``scores(run_id, task, metric)`` may return per-document scores ``{doc: (value, weight)}``
    so that comparisons of two runs on the same documents are paired.
    """
    rows = []
    for scale in scales:
        for c in claims:
            if scale not in c.get("scales", []) or "check" not in c:
                continue
            try:
                held, observed, detail = run_check(c["check"], c["paper"], scale, lookup, z, scores)
                status = "held" if held else "failed"
            except Missing as m:
                status, observed, detail = "missing", {}, f"no stored metric {m} at scale {scale}"
            rows.append(
                {
                    "scale": scale,
                    "paper": c["paper"],
                    "claim_id": c["id"],
                    "status": status,
                    "observed": observed,
                    "detail": detail,
                }
            )
    return rows
