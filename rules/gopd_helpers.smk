# The G-OPD run grid of the scale's papers.gopd section and the input / params functions of
# rules/gopd.smk (plain Snakemake-side code: the workflow imports no method code while it is
# parsed; kept apart because `snakemake --lint` wants rules and functions in separate files).
# Included by rules/gopd.smk before its rules.
#
# Artifacts are named by role: student and teacher (same size), s2w-teacher-base and
# s2w-teacher (strong-to-weak: the larger base after its SFT, then GRPO), mt-teacher-<d>
# (multi-teacher: GRPO on domain d's families). Student runs: lam<l>, s2w-lam<l>, s2w-rc-lam<l>
# (reward correction: pi_ref = the teacher's pre-RL base), s2w-sft, mt-lam<l>, mt-sft,
# <model>-lam<l> (another student model, `extra_students`: its own start is its pi_ref); ExPO:
# expo<a>, mt-expo<a>. The first seed keeps the plain name, later seeds get -s<seed>.


def _gopd_run(method, lam, seed, teachers, ref, multi=False, student="student"):
    """One student run: ``teachers`` {name: role}; ``multi``: routed per domain, with
    per-domain validation (``methods.gopd.train --route --eval-domains``); ``student``: the
    role of its start (``base:<model>`` for an extra student)."""
    return dict(
        method=method,
        lam=lam,
        seed=seed,
        teachers=teachers,
        ref=ref,
        multi=multi,
        student=student,
    )


def _gopd_runs(gopd):
    """{variant: run} for every student run (G-OPD or SFT on teacher samples)."""
    out = {}
    if not gopd:
        return out
    s2w, mt = gopd.get("strong_to_weak"), gopd.get("multi_teacher")
    for s in gopd["seeds"]:
        sfx = "" if s == gopd["seeds"][0] else f"-s{s}"
        for lam in gopd["lambdas"]:
            out[f"lam{lam}{sfx}"] = _gopd_run(
                "gopd", lam, s, {"teacher": "teacher"}, "student"
            )
        for model, extra in gopd.get("extra_students", {}).items():
            for lam in extra["lambdas"]:
                out[f"{model}-lam{lam}{sfx}"] = _gopd_run(
                    "gopd",
                    lam,
                    s,
                    {"teacher": "teacher"},
                    f"base:{model}",
                    student=f"base:{model}",
                )
        if s2w:
            big = {"teacher": "s2w-teacher"}
            for lam in s2w["lambdas"]:
                out[f"s2w-lam{lam}{sfx}"] = _gopd_run("gopd", lam, s, big, "student")
            for lam in s2w["rc_lambdas"]:
                out[f"s2w-rc-lam{lam}{sfx}"] = _gopd_run(
                    "gopd", lam, s, big, "s2w-teacher-base"
                )
            if s2w["sft"]:
                out[f"s2w-sft{sfx}"] = _gopd_run("sft", 1.0, s, big, None)
        if mt:
            many = {d: f"mt-teacher-{d}" for d in mt["domains"]}
            for lam in mt["lambdas"]:
                out[f"mt-lam{lam}{sfx}"] = _gopd_run(
                    "gopd", lam, s, many, "student", multi=True
                )
            if mt["sft"]:
                out[f"mt-sft{sfx}"] = _gopd_run("sft", 1.0, s, many, None, multi=True)
    return out


def _gopd_expo(gopd):
    """{variant: (alpha, teacher roles, per-domain validation)}: ExPO weight extrapolation."""
    out = {}
    if not gopd:
        return out
    for a in gopd["expo_alphas"]:
        out[f"expo{a}"] = (a, ["teacher"], False)
    mt = gopd.get("multi_teacher")
    for a in mt["expo_alphas"] if mt else []:
        out[f"mt-expo{a}"] = (a, [f"mt-teacher-{d}" for d in mt["domains"]], True)
    return out


def _gopd_run_inputs(wildcards):
    """Named inputs of a student run: the student, its teachers and (unless lambda = 1, where
    pi_ref cancels, as in the official code) the reference."""
    run = GOPD_RUNS[wildcards.variant]
    out = {"student": GOPD_ART(run["student"])}
    out |= {f"teacher_{n}": GOPD_ART(a) for n, a in run["teachers"].items()}
    if run["ref"] and not (run["method"] == "gopd" and run["lam"] == 1.0):
        out["ref"] = GOPD_ART(run["ref"])
    return out


def _gopd_run_args(wildcards, input):
    """The methods.gopd.train options naming method, lambda, teachers and reference."""
    run = GOPD_RUNS[wildcards.variant]
    folder = lambda name: os.path.dirname(input[name])
    args = [f"--method {run['method']} --lam {run['lam']}"]
    args += [f"--teacher {n}={folder(f'teacher_{n}')}" for n in run["teachers"]]
    if "ref" in input.keys():
        args.append(f"--ref {folder('ref')}")
    if run["multi"]:
        args.append("--route --eval-domains")
    return " ".join(args)


# The job options of a student run: its seed is the run's.
_gopd_job = job("gopd", "{variant}", seed=lambda w: GOPD_RUNS[w.variant]["seed"])
