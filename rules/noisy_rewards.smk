# Noisy rewards in RL for reasoning: B (the start model after SFT on step-by-step traces) and a
# weaker B_weak; PPO-with-critic runs with group reward flips over p, RPR only, a simulated RM of
# controlled accuracy with and without RPR calibration, GRPO as a named variant; every final
# policy evaluated by the lm-eval suite on step-by-step answers; one summary record
# (methods/noisy_rewards/README.md).
NR = SCALE.get("papers", {}).get("noisy_rewards")
NR_SFT_KEY = {"base": "start_sft", "weak": "weak_sft"}


include: "noisy_rewards_helpers.smk"


NR_ARMS = _nr_arms()
# {variant: (arm, seed)}: the first seed keeps the arm's name, later seeds get -s<seed>.
NR_VARIANTS = (
    {
        (arm if s == NR["seeds"][0] else f"{arm}-s{s}"): (arm, s)
        for arm in NR_ARMS
        for s in NR["seeds"]
    }
    if NR
    else {}
)
NR_BUILT = [w for w in ("base", "weak") if NR and NR.get(NR_SFT_KEY[w])]
NR_EVAL_ARMS = set(NR["lm_eval"].get("variants", NR_ARMS)) if NR else set()
NR_EVALUATED = NR_BUILT + sorted(
    v for v, (a, _) in NR_VARIANTS.items() if a in NR_EVAL_ARMS
)
NR_SUMMARY_ARMS = [
    a for a in NR_ARMS if a == "rpr" or a[0] == "p" or a.startswith("weak_p")
]

if NR and "noisy_rewards" in PAPERS:
    RUN_RECORDS["noisy_rewards"] = (
        [f"{RUNS}/noisy_rewards/{v}/train.json" for v in NR_BUILT + sorted(NR_VARIANTS)]
        + [f"{RUNS}/noisy_rewards/{v}/lm_eval.json" for v in NR_EVALUATED]
        + [f"{RUNS}/noisy_rewards/summary/summary.json"]
    )


rule noisy_rewards_start:
    input:
        start=lambda w: f"{ART}/base/{NR.get('weak_model', NR['start_model']) if w.which == 'weak' else NR['start_model']}/meta.json",
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/noisy_rewards/{{which}}/meta.json",
        record=f"{RUNS}/noisy_rewards/{{which}}/train.json",
    log:
        f"{LOGS}/noisy_rewards/{{which}}.train.log",
    benchmark:
        f"{LOGS}/noisy_rewards/{{which}}.train.benchmark.tsv"
    wildcard_constraints:
        which=one_of(NR_BUILT),
    threads: JOB_THREADS
    resources:
        mem_mb=NR.get("mem_mb", 4000) if NR else 4000,
        runtime=NR.get("runtime", 30) if NR else 30,
        gpu=train_gpus("noisy_rewards"),
    params:
        launch=launch("profiles/engine/fsdp2.yaml"),
        job=job("noisy_rewards", "{which}"),
        settings=lambda w: NR_SFT_KEY[w.which],
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.posttrain.cli sft {params.job} --settings {params.settings} "
        "--start {params.start} --train {input.train} --valid {input.valid} "
        "--record {output.record} > {log} 2>&1"


rule noisy_rewards_train:
    input:
        start=lambda w: _nr_start(NR_ARMS[NR_VARIANTS[w.variant][0]][0]),
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/noisy_rewards/{{variant}}/meta.json",
        record=f"{RUNS}/noisy_rewards/{{variant}}/train.json",
    log:
        f"{LOGS}/noisy_rewards/{{variant}}.train.log",
    benchmark:
        f"{LOGS}/noisy_rewards/{{variant}}.train.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(NR_VARIANTS)),
    threads: JOB_THREADS
    resources:
        mem_mb=NR["mem_mb"] if NR else 4000,
        runtime=NR["runtime"] if NR else 30,
        gpu=train_gpus("noisy_rewards"),
    params:
        launch=launch("profiles/engine/fsdp2.yaml"),
        job=_nr_job,
        arm=_nr_arm_args,
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.noisy_rewards.train {params.job} {params.arm} "
        "--start {params.start} --train {input.train} --valid {input.valid} "
        "--record {output.record} > {log} 2>&1"


# Cross-run measurements of the flip / RPR arms: one summary record whose seed is the grid's
# first (the seed of its first input record).
rule noisy_rewards_summary:
    input:
        [
            f"{RUNS}/noisy_rewards/{v}/train.json"
            for v, (a, _) in NR_VARIANTS.items()
            if a in NR_SUMMARY_ARMS
        ],
    output:
        summary=f"{RUNS}/noisy_rewards/summary/summary.json",
    log:
        f"{LOGS}/noisy_rewards/summary.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        job=job(
            "noisy_rewards",
            "summary",
            out="summary",
            seed=NR["seeds"][0] if NR else None,
        ),
    shell:
        "python -m methods.noisy_rewards.summary {params.job} --records {input} > {log} 2>&1"


rule noisy_rewards_all:
    input:
        RUN_RECORDS.get("noisy_rewards", []),
    localrule: True
