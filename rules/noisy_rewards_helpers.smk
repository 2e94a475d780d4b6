# Input and params functions of rules/noisy_rewards.smk (kept apart: `snakemake --lint` wants
# rules and functions in separate files). Included by rules/noisy_rewards.smk before its rules.


def _nr_start(which):
    """meta.json of B ("base") or B_weak ("weak"): built by SFT here, or a base model as is."""
    if NR.get(NR_SFT_KEY[which]):
        return f"{ART}/noisy_rewards/{which}/meta.json"
    model = (
        NR.get("weak_model", NR["start_model"])
        if which == "weak"
        else NR["start_model"]
    )
    return f"{ART}/base/{model}/meta.json"


def _nr_arms():
    """{arm: (start, reward options of methods.noisy_rewards.train, algo)} over the scale's
    grid; the RPR and RM settings come from the scale file in the job itself."""
    if not NR:
        return {}
    algo = NR["rl"]["algo"]
    arms = {}
    for p in NR["flip_ps"]:
        arms[f"p{float(p)}"] = ("base", f"--reward correct --flip-p {p}", algo)
    if NR["rpr_only"]:
        arms["rpr"] = ("base", "--reward rpr", algo)
    if NR.get("shuffled_null"):
        arms["shuffled"] = ("base", "--reward shuffled", algo)
    k = NR.get("long_steps_factor", 4)
    for p in NR.get("long_flip_ps", []):
        arms[f"x{k}_p{float(p)}"] = (
            "base",
            f"--reward correct --flip-p {p} --steps-factor {k}",
            algo,
        )
    for p in NR["weak_flip_ps"]:
        arms[f"weak_p{float(p)}"] = ("weak", f"--reward correct --flip-p {p}", algo)
    rm = NR.get("rm")
    for acc in rm["accuracies"] if rm else []:
        for cal in rm["calibrate"]:
            arms[f"rm{round(acc * 100)}" + ("_cal" if cal else "")] = (
                "base",
                f"--reward rm --rm-accuracy {acc}" + (" --calibrate" if cal else ""),
                algo,
            )
    for p in NR["grpo_flip_ps"]:
        arms[f"grpo_p{float(p)}"] = ("base", f"--reward correct --flip-p {p}", "grpo")
    return arms


# The job options of an RL run: its seed is the run's.
_nr_job = job("noisy_rewards", "{variant}", seed=lambda w: NR_VARIANTS[w.variant][1])


def _nr_arm_args(wildcards):
    """The arm's --algo and reward options."""
    _, reward, algo = NR_ARMS[NR_VARIANTS[wildcards.variant][0]]
    return f"--algo {algo} {reward}"
