# D2Quant: GPTQ underneath, the Dual-Scale Quantizer on down_proj and Deviation-Aware Correction
# at the post-attention norm; baselines RTN, GPTQ and (paper scale) GPTQ with a Hadamard rotation,
# GPTAQ and GPTAQ with rotation (methods.quant.apply, uniform bits); the DSQ-only / DAC-only
# ablations, the other two DAC readings (d2quant_seq, d2quant_qboth; methods/d2quant/README.md,
# "DAC readings"), GPTQ's own stream drift (gptq_drift) and the unquantized reference (fp16) of
# each model. Variants: <prefix><arm>-w<bits> with prefix "" (the section's base_model),
# "planted." (its planted-outlier copy) or "<source>." (paper scale: one per model of the
# paper's tables, papers.d2quant.sources). Every artifact is evaluated by the generic eval_lm
# rule (and eval_ppl at the scales whose eval.ppl lists d2quant).
D2Q = (SCALE.get("papers") or {}).get("d2quant")
D2Q_BASELINES = ("rtn", "gptq", "gptq_rot", "gptaq", "gptaq_rot")
D2Q_ARMS = ("d2quant", "d2quant_seq", "d2quant_qboth", "dsq", "dac", "gptq_drift")
D2Q_FLAGS = {
    "d2quant": "",
    "d2quant_seq": "--dac-input quantized",
    "d2quant_qboth": "--dac-input quantized_both",
    "dsq": "--no-dac",
    "dac": "--no-dsq",
    "gptq_drift": "--no-dsq --no-dac",
}


include: "quant_helpers.smk"
include: "d2quant_helpers.smk"


D2Q_SOURCES = d2q_sources()
D2Q_VARIANTS = d2q_variants()
d2q_check_group_size()


if D2Q and "d2quant" in PAPERS:
    RUN_RECORDS["d2quant"] = [
        path
        for v, (_, arm, _) in sorted(D2Q_VARIANTS.items())
        for path in d2q_records(v, arm)
    ]


rule d2quant_baseline:
    input:
        model=d2q_source,
        calib=f"{DATA}/text/train.txt",
    output:
        meta=f"{ART}/d2quant/{{src}}{{arm}}-w{{bits}}/meta.json",
        record=f"{RUNS}/d2quant/{{src}}{{arm}}-w{{bits}}/quant.json",
    log:
        f"{LOGS}/d2quant/{{src}}{{arm}}-w{{bits}}.log",
    benchmark:
        f"{LOGS}/d2quant/{{src}}{{arm}}-w{{bits}}.benchmark.tsv"
    wildcard_constraints:
        src=d2q_src_regex(),
        arm=one_of(D2Q_BASELINES),
        bits=r"[0-9]+",
    threads: JOB_THREADS
    resources:
        mem_mb=d2q_resource("mem_mb", 4000),
        runtime=d2q_resource("runtime", 30),
        gpu=d2q_resource("gpu", GPU),
    params:
        job=job("d2quant", "{src}{arm}-w{bits}"),
        model=lambda w, input: os.path.dirname(input.model),
        group_size=D2Q["group_size"] if D2Q else 0,
        n_calib=D2Q["calib"]["n"] if D2Q else 0,
        seq_len=D2Q["calib"]["seq_len"] if D2Q else 0,
        damp=D2Q["damp"] if D2Q else 0,
        clip="--clip" if D2Q and D2Q["clip"] else "",
        hub_dataset=calib_hub_dataset(D2Q),
    shell:
        "python -m methods.quant.apply {params.job} --model {params.model} "
        "--bits {wildcards.bits} --method {wildcards.arm} --group-size {params.group_size} "
        "--calib {input.calib} --n-calib {params.n_calib} --seq-len {params.seq_len} "
        "--damp {params.damp} {params.clip} --record {output.record} > {log} 2>&1"


rule d2quant_quantize:
    input:
        model=d2q_source,
        calib=f"{DATA}/text/train.txt",
        heldout=f"{DATA}/text/valid.jsonl",
    output:
        meta=f"{ART}/d2quant/{{src}}{{arm}}-w{{bits}}/meta.json",
        record=f"{RUNS}/d2quant/{{src}}{{arm}}-w{{bits}}/d2quant.json",
    log:
        f"{LOGS}/d2quant/{{src}}{{arm}}-w{{bits}}.log",
    benchmark:
        f"{LOGS}/d2quant/{{src}}{{arm}}-w{{bits}}.benchmark.tsv"
    wildcard_constraints:
        src=d2q_src_regex(),
        arm=one_of(D2Q_ARMS),
        bits=r"[0-9]+",
    threads: JOB_THREADS
    resources:
        mem_mb=d2q_resource("mem_mb", 4000),
        runtime=d2q_resource("runtime", 30),
        gpu=d2q_resource("gpu", GPU),
    params:
        job=job("d2quant", "{src}{arm}-w{bits}"),
        model=lambda w, input: os.path.dirname(input.model),
        flags=lambda w: D2Q_FLAGS[w.arm],
        hub_dataset=calib_hub_dataset(D2Q),
    shell:
        "python -m methods.d2quant.quantize {params.job} --model {params.model} "
        "--bits {wildcards.bits} {params.flags} --calib {input.calib} "
        "--heldout {input.heldout} --record {output.record} > {log} 2>&1"


# The unquantized model of a source (the tables' FP16 rows): an artifact that points at the base
# model, evaluated like every variant (the paper's lm-eval tasks, WikiText-2 perplexity).
rule d2quant_fp16:
    input:
        model=d2q_source,
    output:
        meta=f"{ART}/d2quant/{{src}}fp16/meta.json",
    log:
        f"{LOGS}/d2quant/{{src}}fp16.log",
    wildcard_constraints:
        src=d2q_src_regex(),
    localrule: True
    params:
        job=job("d2quant", "{src}fp16"),
        model=lambda w, input: os.path.dirname(input.model),
    shell:
        "python -m methods.d2quant.reference {params.job} --model {params.model} > {log} 2>&1"


rule d2quant_all:
    input:
        # read when the job graph is built: rules/eval.smk, included later, adds this
        # paper's perplexity records (ppl.json) at the scales that list it
        lambda w: RUN_RECORDS.get("d2quant", []),
    localrule: True
