# Functions of rules/quant.smk (kept apart: `snakemake --lint` wants rules and functions in
# separate files). Included by rules/quant.smk and rules/d2quant.smk.


def planted_name(model, planted):
    """Artifact name of a planted-outlier copy of ``model`` ({layers, alpha, channels})."""
    layers = "_".join(str(i) for i in planted["layers"])
    return f"{model}-plant-L{layers}-a{planted['alpha']:g}-c{planted['channels']}"
