# PSFT (proximal SFT): arms SFT / PSFT / SFT-KL / SFT at a lower lr from one start model on the
# arithmetic world's demonstrations, equal token budgets; each arm evaluated by lm-eval.
PSFT = SCALE.get("papers", {}).get("psft")


# {variant: (arm, seed)}: the first seed keeps the arm's name, later seeds get -s<seed>.
PSFT_VARIANTS = {
    (arm if s == PSFT["seeds"][0] else f"{arm}-s{s}"): (arm, s)
    for arm in (PSFT["arms"] if PSFT else [])
    for s in PSFT["seeds"]
}

# RL after SFT (spec P5): {variant: source arm variant}, GRPO from each listed arm's artifact.
PSFT_RL = {
    f"{v}-rl": v
    for v, (arm, s) in PSFT_VARIANTS.items()
    if arm in ((PSFT or {}).get("rl") or {}).get("arms", [])
}

if PSFT and "psft" in PAPERS:
    RUN_RECORDS["psft"] = [
        f"{RUNS}/psft/{v}/{suite}.json"
        for v in sorted(PSFT_VARIANTS) + sorted(PSFT_RL)
        for suite in ("lm_eval", "train")
    ]


rule psft_train:
    input:
        start=lambda w: f"{ART}/base/{PSFT['start_model']}/meta.json",
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/psft/{{variant}}/meta.json",
        record=f"{RUNS}/psft/{{variant}}/train.json",
    log:
        f"{LOGS}/psft/{{variant}}.train.log",
    benchmark:
        f"{LOGS}/psft/{{variant}}.train.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(PSFT_VARIANTS)),
    threads: JOB_THREADS
    resources:
        mem_mb=PSFT.get("mem_mb", 4000) if PSFT else 4000,
        runtime=PSFT.get("runtime", 30) if PSFT else 30,
        gpu=GPU,
    params:
        arm=lambda w: PSFT_VARIANTS[w.variant][0],
        seed=lambda w: PSFT_VARIANTS[w.variant][1],
        config=lambda w: json.dumps(PSFT["train"], sort_keys=True),
        start=lambda w, input: os.path.dirname(input.start),
        out=output_dir,
        scale=SCALE_NAME,
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.psft.train --arm {params.arm} --start {params.start} "
        "--train {input.train} --valid {input.valid} --config {params.config:q} "
        "--out {params.out} --record {output.record} --scale {params.scale} "
        "--variant {wildcards.variant} --seed {params.seed} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule psft_rl:
    input:
        start=lambda w: f"{ART}/psft/{PSFT_RL[w.variant]}/meta.json",
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/psft/{{variant}}/meta.json",
        record=f"{RUNS}/psft/{{variant}}/train.json",
    log:
        f"{LOGS}/psft/{{variant}}.train.log",
    benchmark:
        f"{LOGS}/psft/{{variant}}.train.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(PSFT_RL)),
    threads: JOB_THREADS
    resources:
        mem_mb=PSFT.get("mem_mb", 4000) if PSFT else 4000,
        runtime=PSFT.get("runtime", 30) if PSFT else 30,
        gpu=GPU,
    params:
        config=lambda w: json.dumps(PSFT["rl"]["grpo"], sort_keys=True),
        start=lambda w, input: os.path.dirname(input.start),
        seed=lambda w: PSFT_VARIANTS[PSFT_RL[w.variant]][1],
        out=output_dir,
        scale=SCALE_NAME,
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.posttrain.cli grpo --start {params.start} --train {input.train} "
        "--valid {input.valid} --config {params.config:q} --out {params.out} "
        "--variant {wildcards.variant} --paper psft --record {output.record} "
        "--scale {params.scale} --seed {params.seed} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule psft_all:
    input:
        RUN_RECORDS.get("psft", []),
    localrule: True
