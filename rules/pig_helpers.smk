# Input and params functions of rules/pig.smk (kept apart: `snakemake --lint` wants rules and
# functions in separate files). Included by rules/pig.smk before its rules.


def pig_generated(wildcards):
    return [f"{PIG_GEN}/manifest.json"] if "generator" in PIG else []


def pig_split_manifests(names):
    return [f"{PIG_DATA}/{n}.manifest.json" for n in names]


def pig_pretrain_inputs(wildcards):
    pre = PIG["pretrain"]
    if "split" not in pre:
        return []
    return pig_split_manifests([pre["split"], *pre["vocab_splits"]])


def pig_finetune_inputs(wildcards):
    bench = PIG_BENCH[wildcards.bench]
    val = [bench["val"]] if "val" in bench else []
    return pig_split_manifests([bench["train"], *bench["tests"], *val])


def pig_tests(wildcards):
    return ",".join(PIG_BENCH[wildcards.bench]["tests"])


def pig_init_param():
    """``model_id`` (read by ``claimbench prefetch``) where theta_0 is a CLIP checkpoint."""
    init = PIG["pretrain"].get("init_from")
    return {"model_id": init} if init else {}
