# PSFT (proximal SFT): arms SFT / PSFT / SFT-KL / SFT at a lower lr from one start model on the
# arithmetic world's demonstrations, equal token budgets; each arm evaluated by lm-eval.
PSFT = SCALE.get("papers", {}).get("psft")


# {variant: (arm, seed)}: the first seed keeps the arm's name, later seeds get -s<seed>.
PSFT_VARIANTS = {
    (arm if s == PSFT["seeds"][0] else f"{arm}-s{s}"): (arm, s)
    for arm in (PSFT["arms"] if PSFT else [])
    for s in PSFT["seeds"]
}

# RL after SFT (claim P5, the paper's Table 2): {variant: source arm variant}, GRPO from each
# listed arm's artifact; no rl section, no RL runs.
PSFT_RL = {
    f"{v}-rl": v
    for v, (arm, s) in PSFT_VARIANTS.items()
    if PSFT and "rl" in PSFT and arm in PSFT["rl"]["arms"]
}

# job() of a PSFT variant with the seed of its arm variant (``source`` maps the {variant}
# wildcard to a key of PSFT_VARIANTS).
PSFT_JOB = lambda source: job(
    "psft", "{variant}", seed=lambda w: PSFT_VARIANTS[source(w.variant)][1]
)

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
        # the held-out families, scored in-process on the saved model (papers.psft.ood)
        ood=[f"{DATA}/arith/test_ood.jsonl"] if PSFT and PSFT.get("ood") else [],
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
        mem_mb=PSFT["mem_mb"] if PSFT else 4000,
        runtime=PSFT["runtime"] if PSFT else 30,
        gpu=train_gpus("psft"),
    params:
        launch=launch(),
        job=PSFT_JOB(lambda v: v),
        arm=lambda w: PSFT_VARIANTS[w.variant][0],
        ood=lambda w, input: f"--ood {input.ood}" if input.ood else "",
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.psft.train {params.job} --arm {params.arm} "
        "--start {params.start} --train {input.train} --valid {input.valid} {params.ood} "
        "--record {output.record} > {log} 2>&1"


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
        mem_mb=PSFT["mem_mb"] if PSFT else 4000,
        runtime=PSFT["runtime"] if PSFT else 30,
        gpu=train_gpus("psft"),
    params:
        launch=launch(),
        job=PSFT_JOB(lambda v: PSFT_RL[v]),
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.posttrain.cli grpo {params.job} --settings rl.grpo "
        "--start {params.start} --train {input.train} --valid {input.valid} "
        "--record {output.record} > {log} 2>&1"


rule psft_all:
    input:
        RUN_RECORDS.get("psft", []),
    localrule: True
