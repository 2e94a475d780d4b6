# MTP-D: main model + MTP heads trained jointly from scratch (ntp / mtp / mtp_d / mtp_d_nosg),
# looped head extension, and one speculative-decoding measurement over all of them.
if "mtp_d" not in SCALE.get("papers", {}):
    raise WorkflowError(
        f"scale {SCALE_NAME}: papers.mtp_d: section missing from the scale file"
    )
MTPD = SCALE["papers"]["mtp_d"]
MTPD_ART = f"{ART}/mtp_d"
MTPD_RUNS = f"{RUNS}/mtp_d"
MTPD_TRAINED = list(MTPD["variants"])
# The grid as data: looped extensions <source>_loop<K * factor> -> (the artifact it grows,
# factor of that step) and the training-free cyclic reuses (source, draft depth), both optional
# sections of papers.mtp_d. Loops grow step by step as the paper does (K -> 2K -> 4K: the
# 4K-head run starts from the 2K-head run), so each factor must be a multiple of the previous.
MTPD_LOOP_FACTORS = sorted((MTPD.get("loop") or {}).get("factors", []))
for _prev, _f in zip([1] + MTPD_LOOP_FACTORS, MTPD_LOOP_FACTORS):
    if _f % _prev or _f == _prev:
        raise WorkflowError(
            f"papers.mtp_d.loop.factors: {MTPD_LOOP_FACTORS} must grow by whole multiples "
            f"({_f} after {_prev}: each loop starts from the previous loop's heads)"
        )
MTPD_LOOPS = {
    f"{src}_loop{MTPD['heads'] * f}": (
        src if prev == 1 else f"{src}_loop{MTPD['heads'] * prev}",
        f // prev,
    )
    for src in (MTPD.get("loop") or {}).get("sources", [])
    for prev, f in zip([1] + MTPD_LOOP_FACTORS, MTPD_LOOP_FACTORS)
}
MTPD_LOOP_BASE = {
    name: src
    for src in (MTPD.get("loop") or {}).get("sources", [])
    for name in MTPD_LOOPS
    if name.startswith(f"{src}_loop")
}
MTPD_REUSE = [
    (src, MTPD["reuse"]["depth"])
    for src in (MTPD.get("reuse") or {}).get("sources", [])
]
for _src in list(MTPD_LOOP_BASE.values()) + [s for s, _ in MTPD_REUSE]:
    if _src not in MTPD_TRAINED:
        raise WorkflowError(
            f"papers.mtp_d: {_src!r} is a loop/reuse source but not in variants {MTPD_TRAINED} "
            f"(looped extension and reuse need a model with trained MTP heads)"
        )
for _need in ("ntp", "mtp"):
    if _need not in MTPD_TRAINED:
        raise WorkflowError(
            f"papers.mtp_d.variants: {MTPD_TRAINED} must include {_need!r} (speedup reference)"
        )
MTPD_ARTIFACTS = MTPD_TRAINED + sorted(MTPD_LOOPS)
# heads on a pretrained, frozen trunk (papers.mtp_d.trunk, a models entry) instead of from scratch
MTPD_TRUNK = MTPD.get("trunk")
if MTPD_TRUNK is not None:
    if MTPD_TRUNK not in MODELS:
        raise WorkflowError(
            f"papers.mtp_d.trunk: {MTPD_TRUNK!r} is not one of the scale's models {sorted(MODELS)}"
        )
    if "mtp_d_nosg" in MTPD_TRAINED:
        raise WorkflowError(
            "papers.mtp_d.variants: 'mtp_d_nosg' on a frozen trunk (papers.mtp_d.trunk) is "
            "the same run as 'mtp_d' (the stop-gradient only changes the trunk's gradient)"
        )
MTPD_TRUNK_INPUT = [f"{ART}/base/{MTPD_TRUNK}/meta.json"] if MTPD_TRUNK else []
# every speculative record: the 1-head MTP reference, each artifact, each reuse
MTPD_SPEC_CONFIGS = (
    ["mtp_1head"] + MTPD_ARTIFACTS + [f"{src}_reuse{d}" for src, d in MTPD_REUSE]
)
# the pre-training text: a local dump (text_file) or the scale's text split
MTPD_TEXT = MTPD.get("text_file", f"{DATA}/text/train.txt")
MTPD_RES = MTPD["resources"]
# Training jobs: one process per GPU through the engine's launcher (rules/common.smk `launch`)
# when the scale has GPUs and papers.mtp_d.resources.train_gpus asks for several.
MTPD_TRAIN_GPUS = train_gpus(configured=MTPD_RES.get("train_gpus"))
MTPD_ENGINE = MTPD.get("engine") or {}

# Main-head evaluation: on a frozen trunk every variant's main head is the trunk itself, bit for
# bit, so only ntp (the trunk) is evaluated; a comparison of main heads there would hold by
# construction, and the main-head claims stay without data ("missing") instead of "held".
MTPD_EVALUATED = ["ntp"] if MTPD_TRUNK else MTPD_ARTIFACTS

RUN_RECORDS["mtp_d"] = (
    expand(f"{MTPD_RUNS}/{{variant}}/lm_eval.json", variant=MTPD_EVALUATED)
    + expand(f"{MTPD_RUNS}/{{variant}}/train.json", variant=MTPD_ARTIFACTS)
    + expand(f"{MTPD_RUNS}/{{variant}}/speculative.json", variant=MTPD_SPEC_CONFIGS)
)


rule mtp_d_train:
    input:
        tokenizer=f"{ART}/base/tokenizer/meta.json",
        text=MTPD_TEXT,
        arith=f"{DATA}/arith/train.jsonl",
        trunk=MTPD_TRUNK_INPUT,
    output:
        meta=f"{MTPD_ART}/{{variant}}/meta.json",
        record=f"{MTPD_RUNS}/{{variant}}/train.json",
    log:
        f"{LOGS}/mtp_d/{{variant}}.log",
    benchmark:
        f"{LOGS}/mtp_d/{{variant}}.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(MTPD_TRAINED),
    threads: JOB_THREADS
    resources:
        mem_mb=MTPD_RES["train_mem_mb"],
        runtime=MTPD_RES["train_runtime"],
        # ntp on a pretrained trunk trains nothing: one GPU, one process
        gpu=lambda w: GPU if MTPD_TRUNK and w.variant == "ntp" else MTPD_TRAIN_GPUS,
    params:
        launch=launch(MTPD_ENGINE.get("accelerate_config")),
        job=job("mtp_d", "{variant}"),
        tokenizer=input_dir,
        trunk=lambda w, input: (
            f" --trunk {os.path.dirname(input.trunk[0])}" if input.trunk else ""
        ),
    shell:
        "{params.launch} -m methods.mtp_d.build train {params.job} --tokenizer {params.tokenizer} "
        "--text {input.text} --arith {input.arith} --record {output.record}{params.trunk} "
        "> {log} 2>&1"


rule mtp_d_extend:
    input:
        source=lambda w: f"{MTPD_ART}/{MTPD_LOOPS[w.variant][0]}/meta.json",
        tokenizer=f"{ART}/base/tokenizer/meta.json",
        text=MTPD_TEXT,
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{MTPD_ART}/{{variant}}/meta.json",
        record=f"{MTPD_RUNS}/{{variant}}/train.json",
    log:
        f"{LOGS}/mtp_d/{{variant}}.log",
    benchmark:
        f"{LOGS}/mtp_d/{{variant}}.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(MTPD_LOOPS)),
    threads: JOB_THREADS
    resources:
        mem_mb=MTPD_RES["train_mem_mb"],
        runtime=MTPD_RES["train_runtime"],
        gpu=MTPD_TRAIN_GPUS,
    params:
        launch=launch(MTPD_ENGINE.get("accelerate_config")),
        job=job("mtp_d", "{variant}"),
        factor=lambda w: MTPD_LOOPS[w.variant][1],
        source=input_dir,
        tokenizer=lambda w, input: os.path.dirname(input.tokenizer),
    shell:
        "{params.launch} -m methods.mtp_d.build extend {params.job} --source {params.source} "
        "--factor {params.factor} --tokenizer {params.tokenizer} --text {input.text} "
        "--arith {input.arith} --record {output.record} > {log} 2>&1"


rule mtp_d_speculative:
    input:
        metas=expand(f"{MTPD_ART}/{{variant}}/meta.json", variant=MTPD_ARTIFACTS),
        data=[f"{DATA}/arith/test_id.jsonl", f"{DATA}/text/test.jsonl"],
    output:
        records=expand(
            f"{MTPD_RUNS}/{{variant}}/speculative.json", variant=MTPD_SPEC_CONFIGS
        ),
    log:
        f"{LOGS}/mtp_d/speculative.log",
    benchmark:
        f"{LOGS}/mtp_d/speculative.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=MTPD_RES["speculative_mem_mb"],
        runtime=MTPD_RES["speculative_runtime"],
        gpu=GPU,
    params:
        # one job writes every record: its --out is their folder, not one of the outputs
        job=job("mtp_d", "speculative", out=lambda w: MTPD_RUNS),
        artifacts=lambda w, input: os.path.dirname(os.path.dirname(input.metas[0])),
        variants=",".join(MTPD_ARTIFACTS),
        reuse=",".join(f"{src}:{d}" for src, d in MTPD_REUSE),
        data=data_dir,
    shell:
        "python -m methods.mtp_d.speculative {params.job} --artifacts {params.artifacts} "
        "--variants {params.variants} --reuse '{params.reuse}' --data-dir {params.data} "
        "> {log} 2>&1"


rule mtp_d_all:
    input:
        RUN_RECORDS["mtp_d"],
    localrule: True
