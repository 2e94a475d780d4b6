# D2Quant: GPTQ underneath, the Dual-Scale Quantizer on down_proj and Deviation-Aware Correction
# at the post-attention norm; baselines RTN and GPTQ (methods.quant.apply, uniform bits) and the
# DSQ-only / DAC-only ablations, and d2quant_local (DAC measured on the float stream's input: the
# other reading of DAC, see methods/d2quant/README.md). Variants: <arm>-w<bits>, and
# planted.<arm>-w<bits> for the planted-outlier copy of the model. Every artifact is evaluated by the generic eval_lm rule.
D2Q = (SCALE.get("papers") or {}).get("d2quant")
D2Q_BASELINES = ("rtn", "gptq")
D2Q_ARMS = ("d2quant_local", "d2quant", "dsq", "dac")
D2Q_FLAGS = {
    "d2quant": "",
    "dsq": "--no-dac",
    "dac": "--no-dsq",
    "d2quant_local": "--dac-input float",
}


include: "quant_helpers.smk"
include: "d2quant_helpers.smk"


D2Q_VARIANTS = d2q_variants()
d2q_check_group_size()


if D2Q and "d2quant" in PAPERS:
    RUN_RECORDS["d2quant"] = [
        f"{RUNS}/d2quant/{v}/{suite}.json"
        for v, (_, arm, _) in sorted(D2Q_VARIANTS.items())
        for suite in ("lm_eval", "quant" if arm in D2Q_BASELINES else "d2quant")
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
        src=r"(planted\.)?",
        arm=one_of(D2Q_BASELINES),
        bits=r"[0-9]+",
    threads: JOB_THREADS
    resources:
        mem_mb=D2Q["mem_mb"] if D2Q else 4000,
        runtime=D2Q["runtime"] if D2Q else 30,
        gpu=GPU,
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
        src=r"(planted\.)?",
        arm=one_of(D2Q_ARMS),
        bits=r"[0-9]+",
    threads: JOB_THREADS
    resources:
        mem_mb=D2Q["mem_mb"] if D2Q else 4000,
        runtime=D2Q["runtime"] if D2Q else 30,
        gpu=GPU,
    params:
        job=job("d2quant", "{src}{arm}-w{bits}"),
        model=lambda w, input: os.path.dirname(input.model),
        flags=lambda w: D2Q_FLAGS[w.arm],
        hub_dataset=calib_hub_dataset(D2Q),
    shell:
        "python -m methods.d2quant.quantize {params.job} --model {params.model} "
        "--bits {wildcards.bits} {params.flags} --calib {input.calib} "
        "--heldout {input.heldout} --record {output.record} > {log} 2>&1"


rule d2quant_all:
    input:
        # read when the job graph is built: rules/eval.smk, included later, adds this
        # paper's perplexity records (ppl.json) at the scales that list it
        lambda w: RUN_RECORDS.get("d2quant", []),
    localrule: True
