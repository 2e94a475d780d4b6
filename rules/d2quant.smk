# D2Quant: GPTQ underneath, the Dual-Scale Quantizer on down_proj and Deviation-Aware Correction
# at the post-attention norm; baselines RTN and GPTQ (methods.quant.apply, uniform bits) and the
# DSQ-only / DAC-only ablations, and d2quant_local (DAC measured on the float stream's input, the
# spec's open question in section 2.3). Variants: <arm>-w<bits>, and planted.<arm>-w<bits> for the
# planted-outlier copy of the model. Every artifact is evaluated by the generic eval_lm rule.
D2Q = SCALE.get("papers", {}).get("d2quant")
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
        mem_mb=D2Q.get("mem_mb", 4000) if D2Q else 4000,
        runtime=D2Q.get("runtime", 30) if D2Q else 30,
        gpu=GPU,
    params:
        model=lambda w, input: os.path.dirname(input.model),
        group_size=D2Q["group_size"] if D2Q else 0,
        n_calib=D2Q["calib"]["n"] if D2Q else 0,
        seq_len=D2Q["calib"]["seq_len"] if D2Q else 0,
        damp=D2Q.get("damp", 0.01) if D2Q else 0,
        clip="--clip" if D2Q and D2Q.get("clip") else "",
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
        scale=SCALE_NAME,
        out=output_dir,
    shell:
        "python -m methods.quant.apply --model {params.model} --bits {wildcards.bits} "
        "--method {wildcards.arm} --group-size {params.group_size} --calib {input.calib} "
        "--n-calib {params.n_calib} --seq-len {params.seq_len} --damp {params.damp} {params.clip} "
        "--seed {params.seed} --threads {threads} --device {params.device} --out {params.out} "
        "--record {output.record} --scale {params.scale} --paper d2quant "
        "--variant {wildcards.src}{wildcards.arm}-w{wildcards.bits} > {log} 2>&1"


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
        mem_mb=D2Q.get("mem_mb", 4000) if D2Q else 4000,
        runtime=D2Q.get("runtime", 30) if D2Q else 30,
        gpu=GPU,
    params:
        model=lambda w, input: os.path.dirname(input.model),
        flags=lambda w: D2Q_FLAGS[w.arm],
        group_size=D2Q["group_size"] if D2Q else 0,
        n_calib=D2Q["calib"]["n"] if D2Q else 0,
        seq_len=D2Q["calib"]["seq_len"] if D2Q else 0,
        iters=D2Q.get("iters", 15) if D2Q else 0,
        damp=D2Q.get("damp", 0.01) if D2Q else 0,
        clip="--clip" if D2Q and D2Q.get("clip") else "",
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
        scale=SCALE_NAME,
        out=output_dir,
    shell:
        "python -m methods.d2quant.quantize --model {params.model} --bits {wildcards.bits} "
        "{params.flags} --group-size {params.group_size} --calib {input.calib} "
        "--heldout {input.heldout} --n-calib {params.n_calib} --seq-len {params.seq_len} "
        "--iters {params.iters} --damp {params.damp} {params.clip} --seed {params.seed} "
        "--threads {threads} --device {params.device} --out {params.out} --record {output.record} "
        "--scale {params.scale} "
        "--variant {wildcards.src}{wildcards.arm}-w{wildcards.bits} > {log} 2>&1"


rule d2quant_all:
    input:
        RUN_RECORDS.get("d2quant", []),
    localrule: True
