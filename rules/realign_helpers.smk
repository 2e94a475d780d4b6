# Params functions of rules/realign.smk (kept apart: `snakemake --lint` wants rules and functions
# in separate files). Included by rules/realign.smk before its rules.


def _lam(x):
    return f"{float(x):g}"


def ra_json(*keys):
    """Params function: a sub-section of papers.realign as JSON, with the shared settings."""

    def get(wildcards):
        sec = REALIGN
        for k in keys:
            sec = sec[k]
        return json.dumps({**sec, "families": REALIGN["families"]}, sort_keys=True)

    return get


def ra_decode_cfg(wildcards):
    return json.dumps(
        {**REALIGN["decode"], "families": REALIGN["families"]}, sort_keys=True
    )


def ra_trra_cfg(wildcards):
    return json.dumps(
        {
            **{k: v for k, v in REALIGN["trra"].items() if k in RA_TRAIN_KEYS},
            "families": REALIGN["families"],
            "decode": REALIGN["decode"],
        },
        sort_keys=True,
    )


def ra_inra_cfg(wildcards):
    return json.dumps(
        {
            **{
                k: v
                for k, v in REALIGN["inra"].items()
                if k in (*RA_TRAIN_KEYS, "form")
            },
            "families": REALIGN["families"],
            "decode": REALIGN["decode"],
        },
        sort_keys=True,
    )


RA_TRAIN_KEYS = ("steps", "minibatch", "lr", "warmup_steps")
