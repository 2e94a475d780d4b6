# Functions of rules/quant.smk (kept apart: `snakemake --lint` wants rules and functions in
# separate files). Included by rules/quant.smk, rules/d2quant.smk and rules/nsds.smk.


def planted_name(model, planted):
    """Artifact name of a planted-outlier copy of ``model`` ({layers, alpha, channels})."""
    layers = "_".join(str(i) for i in planted["layers"])
    return f"{model}-plant-L{layers}-a{planted['alpha']:g}-c{planted['channels']}"


def calib_hub_dataset(section):
    """The hub data set a paper section's ``calib.dataset`` loads, in the ``hub_dataset`` form
    that `claimbench prefetch` reads ({path, name, kwargs}); "" for a local file or none.
    """
    ds = ((section or {}).get("calib") or {}).get("dataset")
    if not ds or os.path.exists(ds["name"]):
        return ""
    spec = {"path": ds["name"], "name": ds.get("config")}
    if ds.get("data_files"):  # one shard (C4), not the whole data set
        spec["kwargs"] = {
            "data_files": ds["data_files"],
            "split": ds.get("split", "train"),
        }
    return spec
