# Params functions of rules/realign.smk (kept apart: `snakemake --lint` wants rules and functions
# in separate files). Included by rules/realign.smk before its rules.


def _lam(x):
    return f"{float(x):g}"


# A TrRa run's job options carry that run's seed (the lambda sweep runs every seed of trra.seeds).
ra_trra_job = job("realign", "{variant}", seed=lambda w: RA_TRRA[w.variant][4])


def ra_runs_job(variant):
    """Params function: the job options of a job that writes one decode record per lambda; its
    --out is their folder, results/runs/<scale>/realign (<out>/<variant>/realign_decode.json).
    """
    return job("realign", variant, out=lambda w: RA_RUNS)
