"""The G-OPD run grid of a scale's ``papers.gopd`` section, for ``rules/gopd.smk`` (plain data,
no Snakemake objects, so the rules file holds rules only).

Artifacts are named by role: ``student`` and ``teacher`` (same size), ``s2w-teacher-base`` and
``s2w-teacher`` (strong-to-weak: the larger base after its SFT, then GRPO), ``mt-teacher-<d>``
(multi-teacher: GRPO on domain d's families). Student runs: ``lam<l>``, ``s2w-lam<l>``,
``s2w-rc-lam<l>`` (reward correction: pi_ref = the teacher's pre-RL base), ``s2w-sft``,
``mt-lam<l>``, ``mt-sft``; ExPO: ``expo<a>``, ``mt-expo<a>``. The first seed keeps the plain
name, later seeds get ``-s<seed>``.
"""

from __future__ import annotations


def _run(method, lam, seed, teachers, ref, extra=None):
    return dict(method=method, lam=lam, seed=seed, teachers=teachers, ref=ref, extra=extra or {})


def runs(gopd: dict | None) -> dict[str, dict]:
    """{variant: run spec} for every student run (G-OPD or SFT on teacher samples)."""
    out: dict[str, dict] = {}
    if not gopd:
        return out
    s2w, mt = gopd.get("strong_to_weak"), gopd.get("multi_teacher")
    for s in gopd["seeds"]:
        sfx = "" if s == gopd["seeds"][0] else f"-s{s}"
        for lam in gopd["lambdas"]:
            out[f"lam{lam}{sfx}"] = _run("gopd", lam, s, {"teacher": "teacher"}, "student")
        if s2w:
            big = {"teacher": "s2w-teacher"}
            for lam in s2w["lambdas"]:
                out[f"s2w-lam{lam}{sfx}"] = _run("gopd", lam, s, big, "student")
            for lam in s2w.get("rc_lambdas", []):
                out[f"s2w-rc-lam{lam}{sfx}"] = _run("gopd", lam, s, big, "s2w-teacher-base")
            if s2w.get("sft"):
                out[f"s2w-sft{sfx}"] = _run("sft", 1.0, s, big, None)
        if mt:
            doms = mt["domains"]
            many = {d: f"mt-teacher-{d}" for d in doms}
            extra = {
                "routes": {f: d for d, fams in doms.items() for f in fams},
                "eval_domains": doms,
            }
            for lam in mt["lambdas"]:
                out[f"mt-lam{lam}{sfx}"] = _run("gopd", lam, s, many, "student", extra)
            if mt.get("sft"):
                out[f"mt-sft{sfx}"] = _run("sft", 1.0, s, many, None, extra)
    return out


def expo(gopd: dict | None) -> dict[str, tuple]:
    """{variant: (alpha, teacher role names, extra config)}: ExPO weight extrapolation."""
    out: dict[str, tuple] = {}
    gopd = gopd or {}
    for a in gopd.get("expo_alphas", []):
        out[f"expo{a}"] = (a, ["teacher"], {})
    mt = gopd.get("multi_teacher") or {}
    for a in mt.get("expo_alphas", []):
        doms = mt["domains"]
        out[f"mt-expo{a}"] = (a, [f"mt-teacher-{d}" for d in doms], {"eval_domains": doms})
    return out


def run_inputs(run: dict, art) -> dict[str, str]:
    """Named inputs of a student run; ``art(role)`` gives an artifact's meta.json path."""
    out = {"student": art("student")}
    out |= {f"teacher_{n}": art(a) for n, a in run["teachers"].items()}
    if run["ref"] and not (run["method"] == "gopd" and run["lam"] == 1.0):
        out["ref"] = art(run["ref"])  # lambda = 1: pi_ref cancels (the official code skips it)
    return out


def run_args(run: dict, inputs: dict[str, str], dirname) -> str:
    """The ``methods.gopd.train`` arguments naming method, lambda, teachers and reference."""
    args = [f"--method {run['method']} --lam {run['lam']}"]
    args += [f"--teacher {n}={dirname(inputs[f'teacher_{n}'])}" for n in run["teachers"]]
    if inputs.get("ref"):
        args.append(f"--ref {dirname(inputs['ref'])}")
    return " ".join(args)
