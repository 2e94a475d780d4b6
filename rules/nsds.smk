# NSDS (data-free layer-wise 2/4-bit allocation): source models (a tiny Llama trained here, its
# planted-outlier variant, or a base model), every method's layer scores, the in-memory allocation
# study (oracle damage, Spearman, random allocations) and real packed artifacts built by the shared
# quantization layer, each evaluated by the generic lm-eval rule.
NSDS = SCALE.get("papers", {}).get("nsds")


include: "quant_helpers.smk"
include: "nsds_helpers.smk"


NSDS_SOURCES = NSDS["sources"] if NSDS else {}
NSDS_TRAINED = sorted(s for s, v in NSDS_SOURCES.items() if "train" in v)
NSDS_PLANTED = sorted(s for s, v in NSDS_SOURCES.items() if "plant" in v)
NSDS_MEM = NSDS["mem_mb"] if NSDS else 4000
NSDS_RUNTIME = NSDS["runtime"] if NSDS else 60


if NSDS:
    nsds_check_sources()


# {variant: (source, method, budget)}: <source>-<method>-b<budget>; uniform only at whole budgets.
NSDS_VARIANTS = {
    f"{src}-{m}-b{nsds_budget_name(b)}": (src, m, float(b))
    for src in (NSDS["artifact_sources"] if NSDS else [])
    for m in NSDS["methods"]
    for b in NSDS["budgets"]
    if m != "uniform" or float(b) == int(b)
}
# The random control's extra packed draws (`random_draws`: n draws at each listed budget, for every
# artifact source whose methods include random): draw 0 is <src>-random-b<B>, draw k
# <src>-random-b<B>-s<k> (its ranking seeded seed + k; the GPTQ calibration is draw 0's).
NSDS_DRAWS_CFG = (NSDS.get("random_draws") or {}) if NSDS else {}
NSDS_DRAW_BASES = {
    f"{src}-random-b{nsds_budget_name(b)}": (src, float(b))
    for src in (
        NSDS["artifact_sources"] if NSDS and "random" in NSDS["methods"] else []
    )
    for b in NSDS_DRAWS_CFG.get("budgets", [])
    if NSDS_DRAWS_CFG.get("n", 1) > 1
}
NSDS_DRAWS = {
    f"{base}-s{k}": k
    for base in NSDS_DRAW_BASES
    for k in range(1, NSDS_DRAWS_CFG.get("n", 1))
}
NSDS_VARIANTS.update(
    {
        f"{base}-s{k}": (src, "random", b)
        for base, (src, b) in NSDS_DRAW_BASES.items()
        for k in range(1, NSDS_DRAWS_CFG["n"])
    }
)
NSDS_STUDIED = sorted(NSDS["study_sources"]) if NSDS else []
NSDS_SCORED = sorted(
    set(NSDS_STUDIED) | {v[0] for v in NSDS_VARIANTS.values() if v[1] != "uniform"}
)
# "mi": per-layer scores imported from the MI suite's zero-ablation sensitivity (mi_steer's
# efficiency use case, methods/mi_steer/README.md), measured on the NSDS source itself.
NSDS_IMPORTED = {"mi"}
NSDS_SCORE_METHODS = (
    sorted(
        (set(NSDS["study_methods"]) | set(NSDS["methods"]))
        - {"uniform"}
        - NSDS_IMPORTED
    )
    if NSDS
    else []
)
NSDS_MI_SOURCES = (
    sorted(
        set(NSDS_STUDIED if "mi" in NSDS["study_methods"] else [])
        | {v[0] for v in NSDS_VARIANTS.values() if v[1] == "mi"}
    )
    if NSDS
    else []
)

if NSDS and "nsds" in PAPERS:
    RUN_RECORDS["nsds"] = (
        [f"{RUNS}/nsds/{s}/alloc.json" for s in NSDS_STUDIED]
        + [
            f"{RUNS}/nsds/{v}/{suite}.json"
            for v in sorted(NSDS_VARIANTS)
            for suite in ("plan", "lm_eval")
        ]
        + [f"{RUNS}/nsds/{s}/lm_eval.json" for s in NSDS["eval_sources"]]
        + [f"{RUNS}/nsds/{s}/train.json" for s in NSDS_TRAINED]
        + [f"{RUNS}/mi_steer/nsds-{s}/sensitivity.json" for s in NSDS_MI_SOURCES]
        + [f"{RUNS}/nsds/{b}-draws/random_draws.json" for b in sorted(NSDS_DRAW_BASES)]
    )


rule nsds_train_source:
    input:
        tokenizer=f"{ART}/base/tokenizer/meta.json",
        text=f"{DATA}/text/train.txt",
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{ART}/nsds/{{src}}/meta.json",
        record=f"{RUNS}/nsds/{{src}}/train.json",
    log:
        f"{LOGS}/nsds/{{src}}.train.log",
    benchmark:
        f"{LOGS}/nsds/{{src}}.train.benchmark.tsv"
    wildcard_constraints:
        src=one_of(NSDS_TRAINED),
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    params:
        job=job("nsds", "{src}"),
        tokenizer=input_dir,
    shell:
        "python -m methods.lm.build tiny {params.job} --spec sources.{wildcards.src}.train "
        "--tokenizer {params.tokenizer} --text {input.text} --arith {input.arith} "
        "--record {output.record} > {log} 2>&1"


rule nsds_plant:
    input:
        source=lambda w: nsds_source_meta(NSDS_SOURCES[w.src]["plant"]["from"]),
    output:
        meta=f"{ART}/nsds/{{src}}/meta.json",
    log:
        f"{LOGS}/nsds/{{src}}.plant.log",
    wildcard_constraints:
        src=one_of(NSDS_PLANTED),
    threads: 1
    resources:
        mem_mb=NSDS_MEM,
        runtime=10,
    params:
        job=job("nsds", "{src}"),
        source=input_dir,
        layers=lambda w: ",".join(map(str, NSDS_SOURCES[w.src]["plant"]["layers"])),
        channels=lambda w: NSDS_SOURCES[w.src]["plant"]["channels"],
        alpha=lambda w: NSDS_SOURCES[w.src]["plant"]["alpha"],
    shell:
        "python -m methods.quant.plant {params.job} --model {params.source} "
        "--layers {params.layers} --channels {params.channels} --alpha {params.alpha} "
        "> {log} 2>&1"


rule nsds_scores:
    input:
        source=lambda w: nsds_source_meta(w.src),
        calib=f"{DATA}/text/train.txt",
    output:
        meta=f"{ART}/nsds/scores/{{src}}/meta.json",
    log:
        f"{LOGS}/nsds/{{src}}.scores.log",
    benchmark:
        f"{LOGS}/nsds/{{src}}.scores.benchmark.tsv"
    wildcard_constraints:
        src=one_of(NSDS_SCORED),
    threads: JOB_THREADS
    resources:
        mem_mb=NSDS_MEM,
        runtime=NSDS_RUNTIME,
        gpu=GPU,
    params:
        job=job("nsds", "{src}"),
        source=input_dir,
        methods=",".join(NSDS_SCORE_METHODS),
    shell:
        "python -m methods.nsds.cli scores {params.job} --model {params.source} "
        "--methods {params.methods} --calib {input.calib} > {log} 2>&1"


rule nsds_study:
    input:
        source=lambda w: nsds_source_meta(w.src),
        scores=f"{ART}/nsds/scores/{{src}}/meta.json",
        imported=lambda w: [
            f"{ART}/nsds/scores/{w.src}/{m}.json"
            for m in sorted(NSDS_IMPORTED & set(NSDS["study_methods"]))
        ],
        text=f"{DATA}/text/valid.jsonl",
    output:
        record=f"{RUNS}/nsds/{{src}}/alloc.json",
        details=f"{ART}/nsds/study/{{src}}.json",
    log:
        f"{LOGS}/nsds/{{src}}.study.log",
    benchmark:
        f"{LOGS}/nsds/{{src}}.study.benchmark.tsv"
    wildcard_constraints:
        src=one_of(NSDS_STUDIED),
    threads: JOB_THREADS
    resources:
        mem_mb=NSDS_MEM,
        runtime=2 * NSDS_RUNTIME,
        gpu=GPU,
    params:
        job=job("nsds", "{src}", out="record"),
        source=input_dir,
        scores=lambda w, input: os.path.dirname(input.scores),
    shell:
        "python -m methods.nsds.cli study {params.job} --model {params.source} "
        "--scores {params.scores} --text {input.text} --details {output.details} > {log} 2>&1"


rule nsds_quantize:
    input:
        source=lambda w: nsds_source_meta(NSDS_VARIANTS[w.variant][0]),
        scores=lambda w: (
            []
            if NSDS_VARIANTS[w.variant][1] == "uniform"
            else f"{ART}/nsds/scores/{NSDS_VARIANTS[w.variant][0]}/meta.json"
        ),
        imported=lambda w: (
            [
                f"{ART}/nsds/scores/{NSDS_VARIANTS[w.variant][0]}/{NSDS_VARIANTS[w.variant][1]}.json"
            ]
            if NSDS_VARIANTS[w.variant][1] in NSDS_IMPORTED
            else []
        ),
        calib=f"{DATA}/text/train.txt",
    output:
        meta=f"{ART}/nsds/{{variant}}/meta.json",
        record=f"{RUNS}/nsds/{{variant}}/plan.json",
    log:
        f"{LOGS}/nsds/{{variant}}.quantize.log",
    benchmark:
        f"{LOGS}/nsds/{{variant}}.quantize.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(NSDS_VARIANTS)),
    threads: JOB_THREADS
    resources:
        mem_mb=NSDS_MEM,
        runtime=NSDS_RUNTIME,
        gpu=GPU,
    params:
        job=job("nsds", "{variant}"),
        source=input_dir,
        scores=lambda w: f"{ART}/nsds/scores/{NSDS_VARIANTS[w.variant][0]}",
        src=lambda w: NSDS_VARIANTS[w.variant][0],
        method=lambda w: NSDS_VARIANTS[w.variant][1],
        budget=lambda w: NSDS_VARIANTS[w.variant][2],
        draw=lambda w: (
            f"--draw {NSDS_DRAWS[w.variant]}" if w.variant in NSDS_DRAWS else ""
        ),
        hub_dataset=calib_hub_dataset(NSDS),
    shell:
        "python -m methods.nsds.cli quantize {params.job} --model {params.source} "
        "--scores {params.scores} --method {params.method} --budget {params.budget} "
        "{params.draw} --calib {input.calib} --source {params.src} "
        "--record {output.record} > {log} 2>&1"


rule nsds_random_draws:
    """Median, min, max and spread of the random control's packed draws (lm-eval metrics)."""
    input:
        records=lambda w: [f"{RUNS}/nsds/{w.base}/lm_eval.json"]
        + [
            f"{RUNS}/nsds/{w.base}-s{k}/lm_eval.json"
            for k in range(1, NSDS_DRAWS_CFG["n"])
        ],
    output:
        record=f"{RUNS}/nsds/{{base}}-draws/random_draws.json",
    log:
        f"{LOGS}/nsds/{{base}}.random_draws.log",
    wildcard_constraints:
        base=one_of(sorted(NSDS_DRAW_BASES)),
    localrule: True
    params:
        job=job("nsds", "{base}-draws", out="record"),
        records=lambda w, input: ",".join(input.records),
    shell:
        "python -m methods.nsds.cli draws {params.job} --records {params.records} > {log} 2>&1"


rule nsds_mi_sensitivity:
    """The MI suite's per-module zero-ablation ΔNLL, measured on an NSDS source model with its own
    tokenizer on the calibration text and budget LIM gets (a run record of the mi_steer paper,
    variant nsds-<source>)."""
    input:
        source=lambda w: nsds_source_meta(w.src),
        text=f"{DATA}/text/train.txt",
    output:
        record=f"{RUNS}/mi_steer/nsds-{{src}}/sensitivity.json",
        scores=f"{ART}/mi_steer/nsds-{{src}}/layer_sensitivity.json",
    log:
        f"{LOGS}/nsds/{{src}}.mi_sensitivity.log",
    wildcard_constraints:
        src=one_of(NSDS_MI_SOURCES),
    threads: JOB_THREADS
    resources:
        mem_mb=NSDS_MEM,
        runtime=NSDS_RUNTIME,
        gpu=GPU,
    params:
        job=job("mi_steer", "nsds-{src}", out="record"),
        source=input_dir,
        n_neutral=lambda w: NSDS["calib"]["n"],
        neutral_len=lambda w: NSDS["calib"]["seq_len"],
        data=lambda w, input: os.path.dirname(input.text),
    shell:
        "python -m methods.mi_steer.suite sensitivity {params.job} --artifact {params.source} "
        "--data {params.data} --text {input.text} --n-neutral {params.n_neutral} "
        "--neutral-len {params.neutral_len} --sensitivity {output.scores} > {log} 2>&1"


rule nsds_import_mi:
    input:
        source=lambda w: nsds_source_meta(w.src),
        sensitivity=f"{ART}/mi_steer/nsds-{{src}}/layer_sensitivity.json",
    output:
        scores=f"{ART}/nsds/scores/{{src}}/mi.json",
    log:
        f"{LOGS}/nsds/{{src}}.import_mi.log",
    wildcard_constraints:
        src=one_of(NSDS_MI_SOURCES),
    localrule: True
    params:
        job=job("nsds", "{src}", out="scores"),
        source=input_dir,
    shell:
        "python -m methods.nsds.cli import-scores {params.job} --model {params.source} "
        "--method mi --sensitivity {input.sensitivity} > {log} 2>&1"


rule nsds_all:
    input:
        # read when the job graph is built: rules/eval.smk, included later, adds this
        # paper's perplexity records (ppl.json) at the scales that list it
        lambda w: RUN_RECORDS.get("nsds", []),
    localrule: True
