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
    """{arm: (start, reward config, algo)} over the scale's grid."""
    if not NR:
        return {}
    rpr = NR.get("rpr", {})
    rm = NR.get("rm", {})
    algo = NR["rl"].get("algo", "ppo")
    arms = {}
    for p in NR["flip_ps"]:
        arms[f"p{float(p)}"] = (
            "base",
            {"kind": "correct", "flip_p": p, "rpr": rpr},
            algo,
        )
    if NR.get("rpr_only"):
        arms["rpr"] = ("base", {"kind": "rpr", "rpr": rpr}, algo)
    for p in NR.get("weak_flip_ps", []):
        arms[f"weak_p{float(p)}"] = (
            "weak",
            {"kind": "correct", "flip_p": p, "rpr": rpr},
            algo,
        )
    for acc in rm.get("accuracies", []):
        for cal in rm.get("calibrate", [False]):
            arms[f"rm{round(acc * 100)}" + ("_cal" if cal else "")] = (
                "base",
                {
                    "kind": "rm",
                    "rm_accuracy": acc,
                    "calibrate": cal,
                    "tau": rm.get("tau", 0.5),
                    "alpha": rm.get("alpha", 0.1),
                    "rpr": rpr,
                },
                algo,
            )
    for p in NR.get("grpo_flip_ps", []):
        arms[f"grpo_p{float(p)}"] = (
            "base",
            {"kind": "correct", "flip_p": p, "rpr": rpr},
            "grpo",
        )
    return arms
