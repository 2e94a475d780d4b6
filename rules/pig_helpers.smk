# Input and params functions of rules/pig.smk (kept apart: `snakemake --lint` wants rules and
# functions in separate files). Included by rules/pig.smk before its rules.


def pig_split_field(key, default=None):
    def get(wildcards):
        value = PIG["splits"][wildcards.split].get(key, default)
        return (
            value.replace("{generated}", PIG_GEN) if isinstance(value, str) else value
        )

    return get


def pig_split_options(wildcards):
    spec = PIG["splits"][wildcards.split]
    opts = [f"--expect '{json.dumps(spec.get('expect', {}))}'"]
    if "split" in spec:
        opts.append(f"--split {spec['split']}")
    if "videos_csv" in spec:
        opts.append(f"--videos-csv {spec['videos_csv']}")
    return " ".join(opts)


def pig_generated(wildcards):
    return [f"{PIG_GEN}/manifest.json"] if "generator" in PIG else []


def pig_split_manifests(names):
    return [f"{PIG_DATA}/{n}.manifest.json" for n in names]


def pig_pretrain_inputs(wildcards):
    pre = PIG["pretrain"]
    if "split" not in pre:
        return []
    return pig_split_manifests([pre["split"], *pre.get("vocab_splits", [])])


def pig_finetune_inputs(wildcards):
    bench = PIG_BENCH[wildcards.bench]
    return pig_split_manifests([bench["train"], *bench["tests"]])


def pig_tests(wildcards):
    return ",".join(PIG_BENCH[wildcards.bench]["tests"])


def pig_train_split(wildcards):
    return PIG_BENCH[wildcards.bench]["train"]
