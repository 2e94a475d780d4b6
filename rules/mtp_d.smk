# MTP-D: main model + MTP heads trained jointly from scratch (ntp / mtp / mtp_d / mtp_d_nosg),
# looped head extension, and one speculative-decoding measurement over all of them.
if "mtp_d" not in SCALE.get("papers", {}):
    raise WorkflowError(
        f"scale {SCALE_NAME}: papers.mtp_d: section missing from the scale file"
    )
MTPD = SCALE["papers"]["mtp_d"]
MTPD_ART = f"{ART}/mtp_d"
MTPD_TRAINED = list(MTPD["variants"])
MTPD_LOOPS = {
    f"{src}_loop{MTPD['heads'] * f}": (src, f)
    for src in MTPD.get("loop", {}).get("sources", [])
    for f in MTPD["loop"]["factors"]
}
MTPD_REUSE = [
    f"{src}:{MTPD['reuse']['depth']}"
    for src in MTPD.get("reuse", {}).get("sources", [])
]
for _src in [s for s, _ in MTPD_LOOPS.values()] + [r.split(":")[0] for r in MTPD_REUSE]:
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
MTPD_SPEC_CONFIGS = (
    ["mtp_1head"]
    + MTPD_ARTIFACTS
    + [f"{r.split(':')[0]}_reuse{r.split(':')[1]}" for r in MTPD_REUSE]
)
MTPD_TEXT = MTPD.get("text_file", f"{DATA}/text/train.txt")
MTPD_RES = MTPD.get("resources", {})

RUN_RECORDS["mtp_d"] = expand(
    f"{RUNS}/mtp_d/{{variant}}/lm_eval.json", variant=MTPD_ARTIFACTS
) + expand(f"{RUNS}/mtp_d/{{variant}}/speculative.json", variant=MTPD_SPEC_CONFIGS)


_arch = MTPD["architecture"]
MTPD_ARCH_NAME = _arch if isinstance(_arch, str) else "mtp_d-arch"
MTPD_ARCH_JSON = json.dumps(
    {
        k: v
        for k, v in (MODELS[_arch] if isinstance(_arch, str) else _arch).items()
        if k != "train"
    },
    sort_keys=True,
)
MTPD_TRAIN_JSON = json.dumps(
    {k: MTPD[k] for k in ("heads", "train", "loss")}, sort_keys=True
)
MTPD_LOOP_JSON = json.dumps(
    {"loss": MTPD["loss"], "train": MTPD.get("loop", {}).get("train")}, sort_keys=True
)


rule mtp_d_train:
    input:
        tokenizer=f"{ART}/base/tokenizer/meta.json",
        text=MTPD_TEXT,
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{MTPD_ART}/{{variant}}/meta.json",
    log:
        f"{LOGS}/mtp_d/{{variant}}.log",
    benchmark:
        f"{LOGS}/mtp_d/{{variant}}.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(MTPD_TRAINED),
    threads: JOB_THREADS
    resources:
        mem_mb=MTPD_RES.get("train_mem_mb", 4000),
        runtime=MTPD_RES.get("train_runtime", 30),
        gpu=GPU,
    params:
        spec=MTPD_ARCH_JSON,
        arch=MTPD_ARCH_NAME,
        config=MTPD_TRAIN_JSON,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
        long_fraction=SCALE["data"]["arith"].get("long_fraction", 0.3),
        tokenizer=input_dir,
        out=output_dir,
    shell:
        "python -m methods.mtp_d.build train --variant {wildcards.variant} --spec {params.spec:q} "
        "--base-model {params.arch} --config {params.config:q} --tokenizer {params.tokenizer} "
        "--text {input.text} --arith {input.arith} --seed {params.seed} "
        "--long-fraction {params.long_fraction} --threads {threads} --device {params.device} "
        "--out {params.out} "
        "> {log} 2>&1"


rule mtp_d_extend:
    input:
        source=lambda w: f"{MTPD_ART}/{MTPD_LOOPS[w.variant][0]}/meta.json",
        tokenizer=f"{ART}/base/tokenizer/meta.json",
        text=MTPD_TEXT,
        arith=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{MTPD_ART}/{{variant}}/meta.json",
    log:
        f"{LOGS}/mtp_d/{{variant}}.log",
    benchmark:
        f"{LOGS}/mtp_d/{{variant}}.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(MTPD_LOOPS)),
    threads: JOB_THREADS
    resources:
        mem_mb=MTPD_RES.get("train_mem_mb", 4000),
        runtime=MTPD_RES.get("train_runtime", 30),
        gpu=GPU,
    params:
        config=MTPD_LOOP_JSON,
        factor=lambda w: MTPD_LOOPS[w.variant][1],
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
        long_fraction=SCALE["data"]["arith"].get("long_fraction", 0.3),
        source=input_dir,
        tokenizer=lambda w, input: os.path.dirname(input.tokenizer),
        out=output_dir,
    shell:
        "python -m methods.mtp_d.build extend --variant {wildcards.variant} "
        "--source {params.source} --factor {params.factor} --config {params.config:q} "
        "--tokenizer {params.tokenizer} --text {input.text} --arith {input.arith} "
        "--seed {params.seed} --long-fraction {params.long_fraction} --threads {threads} "
        "--device {params.device} --out {params.out} > {log} 2>&1"


rule mtp_d_speculative:
    input:
        metas=expand(f"{MTPD_ART}/{{variant}}/meta.json", variant=MTPD_ARTIFACTS),
        data=[f"{DATA}/arith/test_id.jsonl", f"{DATA}/text/test.jsonl"],
    output:
        records=expand(
            f"{RUNS}/mtp_d/{{variant}}/speculative.json", variant=MTPD_SPEC_CONFIGS
        ),
    log:
        f"{LOGS}/mtp_d/speculative.log",
    benchmark:
        f"{LOGS}/mtp_d/speculative.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=MTPD_RES.get("speculative_runtime", 20),
        gpu=GPU,
    params:
        artifacts=lambda w, input: os.path.dirname(os.path.dirname(input.metas[0])),
        variants=",".join(MTPD_ARTIFACTS),
        reuse=",".join(MTPD_REUSE),
        config=json.dumps(MTPD["speculative"], sort_keys=True),
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
        data=data_dir,
        out=lambda w, output: os.path.dirname(os.path.dirname(output.records[0])),
    shell:
        "python -m methods.mtp_d.speculative --artifacts {params.artifacts} "
        "--variants {params.variants} --reuse '{params.reuse}' --data-dir {params.data} "
        "--config {params.config:q} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} --out-root {params.out} > {log} 2>&1"


rule mtp_d_all:
    input:
        RUN_RECORDS["mtp_d"],
    localrule: True
