# Flexible Realignment (TrRa, InRa) with the DeRa baseline: a slow-thinking reference (SFT on
# the world's long traces with a check block), an efficient aligned model (the reference SFT'd
# on the same traces without the check block), TrRa over the lambda grid, the KL-direction
# switch, the code-faithful mode, TrRa-iter, DeRa decode-time mixing, InRa dual-path decoding.
REALIGN = SCALE.get("papers", {}).get("realign")
RA_ART = f"{ART}/realign"
RA_RUNS = f"{RUNS}/realign"


include: "realign_helpers.smk"


# {variant: (lambda, direction, mode, aligned teacher variant, seed)}; the lambda sweep runs
# every seed of trra.seeds (default: the scale's seed), the first keeping the bare name and the
# others named trra-lam<lambda>-s<seed> (spec section 8: 3 seeds); the other runs use the first.
RA_TRRA = {}
RA_DERA = []
RA_INRA = []
if REALIGN:
    RA_SEEDS = REALIGN["trra"].get("seeds", [SCALE["seed"]])
    for _seed in RA_SEEDS:
        for _l in REALIGN["trra"]["lambdas"]:
            _sfx = "" if _seed == RA_SEEDS[0] else f"-s{_seed}"
            RA_TRRA[f"trra-lam{_lam(_l)}{_sfx}"] = (
                _l,
                "forward",
                "vocab",
                "aligned",
                _seed,
            )
    _s = REALIGN["trra"].get("switch_lambda")
    if _s is not None:
        RA_TRRA[f"trra-rev-lam{_lam(_s)}"] = (
            _s,
            "reverse",
            "vocab",
            "aligned",
            RA_SEEDS[0],
        )
        RA_TRRA[f"trra-code-lam{_lam(_s)}"] = (
            _s,
            "forward",
            "code_faithful",
            "aligned",
            RA_SEEDS[0],
        )
    _it = REALIGN["trra"].get("iter")
    if _it:
        _prev = f"trra-lam{_lam(_it['lambda'])}"
        if _prev not in RA_TRRA:
            raise WorkflowError(
                f"papers.realign.trra.iter.lambda: {_it['lambda']} is not in trra.lambdas "
                f"{REALIGN['trra']['lambdas']} (TrRa-iter starts from that TrRa model)"
            )
        for _r in range(1, _it["rounds"] + 1):
            RA_TRRA[f"trra-iter{_r}-lam{_lam(_it['lambda'])}"] = (
                _it["lambda"],
                "forward",
                "vocab",
                _prev,
                RA_SEEDS[0],
            )
            _prev = f"trra-iter{_r}-lam{_lam(_it['lambda'])}"
    RA_DERA = [f"dera-lam{_lam(x)}" for x in REALIGN["dera_lambdas"]]
    # lambda = 0 is always decoded: the token-for-token identity check (R6)
    RA_INRA_LAMS = sorted({0.0, *map(float, REALIGN["inra"]["lambdas"])})
    RA_INRA = [f"inra-lam{_lam(x)}" for x in RA_INRA_LAMS]

RA_DECODES = ["ref", "aligned", *sorted(RA_TRRA), *RA_DERA, *RA_INRA]
# reference / aligned models used as they are (no SFT here): linked base artifacts
RA_LINKED = {}
if REALIGN and "reference_sft" not in REALIGN:
    RA_LINKED["ref"] = REALIGN["start_model"]
if REALIGN and "aligned_sft" not in REALIGN:
    RA_LINKED["aligned"] = REALIGN["aligned_model"]
RA_BUILT = [v for v in ("ref", "aligned") if v not in RA_LINKED]

if REALIGN and "realign" in PAPERS:
    RUN_RECORDS["realign"] = (
        [f"{RA_RUNS}/{v}/realign_decode.json" for v in RA_DECODES]
        + [f"{RA_RUNS}/{v}/train.json" for v in [*RA_BUILT, *sorted(RA_TRRA), "inra"]]
        + [f"{RA_RUNS}/{v}/lm_eval.json" for v in REALIGN["lm_eval"]["variants"]]
        + [f"{RA_RUNS}/sweep/realign_sweep.json"]
    )


ruleorder: realign_link > realign_ref
ruleorder: realign_link > realign_aligned


rule realign_ref:
    input:
        start=lambda w: f"{ART}/base/{REALIGN['start_model']}/meta.json",
        train=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{RA_ART}/ref/meta.json",
        record=f"{RA_RUNS}/ref/train.json",
    log:
        f"{LOGS}/realign/ref.train.log",
    benchmark:
        f"{LOGS}/realign/ref.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=REALIGN.get("mem_mb", 4000) if REALIGN else 4000,
        runtime=REALIGN.get("runtime", 30) if REALIGN else 30,
        gpu=GPU,
    params:
        config=ra_json("reference_sft"),
        start=lambda w, input: os.path.dirname(input.start),
        out=output_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.posttrain.cli sft --start {params.start} --train {input.train} "
        "--config {params.config:q} --out {params.out} --variant ref --paper realign "
        "--record {output.record} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule realign_aligned:
    input:
        start=f"{RA_ART}/ref/meta.json",
        train=f"{DATA}/arith/train.jsonl",
    output:
        meta=f"{RA_ART}/aligned/meta.json",
        record=f"{RA_RUNS}/aligned/train.json",
    log:
        f"{LOGS}/realign/aligned.train.log",
    benchmark:
        f"{LOGS}/realign/aligned.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=REALIGN.get("mem_mb", 4000) if REALIGN else 4000,
        runtime=REALIGN.get("runtime", 30) if REALIGN else 30,
        gpu=GPU,
    params:
        config=ra_json("aligned_sft"),
        start=lambda w, input: os.path.dirname(input.start),
        out=output_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.realign.train sft --ref {params.start} --train {input.train} "
        "--config {params.config:q} --out {params.out} --variant aligned "
        "--record {output.record} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule realign_link:
    input:
        src=lambda w: f"{ART}/base/{RA_LINKED[w.variant]}/meta.json",
    output:
        meta=f"{RA_ART}/{{variant}}/meta.json",
    log:
        f"{LOGS}/realign/{{variant}}.link.log",
    wildcard_constraints:
        variant=one_of(sorted(RA_LINKED)),
    localrule: True
    params:
        src=lambda w, input: os.path.dirname(input.src),
        out=output_dir,
    shell:
        "python -m methods.realign.link --src {params.src} --variant {wildcards.variant} "
        "--out {params.out} > {log} 2>&1"


rule realign_decode_ref:
    input:
        model=f"{RA_ART}/ref/meta.json",
        test=f"{DATA}/arith/test_id.jsonl",
    output:
        record=f"{RA_RUNS}/ref/realign_decode.json",
    log:
        f"{LOGS}/realign/ref.decode.log",
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPU,
    params:
        config=ra_decode_cfg,
        model=input_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.realign.evaluate single --model {params.model} --variant ref "
        "--test {input.test} --config {params.config:q} --out {output.record} "
        "--scale {params.scale} --seed {params.seed} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule realign_decode_aligned:
    input:
        model=f"{RA_ART}/aligned/meta.json",
        test=f"{DATA}/arith/test_id.jsonl",
        ref_record=f"{RA_RUNS}/ref/realign_decode.json",
    output:
        record=f"{RA_RUNS}/aligned/realign_decode.json",
    log:
        f"{LOGS}/realign/aligned.decode.log",
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPU,
    params:
        config=ra_decode_cfg,
        model=input_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.realign.evaluate single --model {params.model} --variant aligned "
        "--test {input.test} --config {params.config:q} --out {output.record} "
        "--ref-record {input.ref_record} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule realign_trra:
    input:
        ref=f"{RA_ART}/ref/meta.json",
        aligned=lambda w: f"{RA_ART}/{RA_TRRA[w.variant][3]}/meta.json",
        train=f"{DATA}/arith/train.jsonl",
        test=f"{DATA}/arith/test_id.jsonl",
        ref_record=f"{RA_RUNS}/ref/realign_decode.json",
    output:
        meta=f"{RA_ART}/{{variant}}/meta.json",
        record=f"{RA_RUNS}/{{variant}}/train.json",
        decode=f"{RA_RUNS}/{{variant}}/realign_decode.json",
    log:
        f"{LOGS}/realign/{{variant}}.train.log",
    benchmark:
        f"{LOGS}/realign/{{variant}}.train.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(RA_TRRA)),
    threads: JOB_THREADS
    resources:
        mem_mb=REALIGN.get("mem_mb", 4000) if REALIGN else 4000,
        runtime=REALIGN.get("runtime", 30) if REALIGN else 30,
        gpu=GPU,
    params:
        lam=lambda w: RA_TRRA[w.variant][0],
        direction=lambda w: RA_TRRA[w.variant][1],
        mode=lambda w: RA_TRRA[w.variant][2],
        ref=lambda w, input: os.path.dirname(input.ref),
        aligned=lambda w, input: os.path.dirname(input.aligned),
        config=ra_trra_cfg,
        out=output_dir,
        scale=SCALE_NAME,
        seed=lambda w: RA_TRRA[w.variant][4],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.realign.train trra --ref {params.ref} --aligned {params.aligned} "
        "--lam={params.lam} --direction {params.direction} --mode {params.mode} "
        "--train {input.train} --test {input.test} --config {params.config:q} "
        "--out {params.out} --variant {wildcards.variant} --record {output.record} "
        "--decode-out {output.decode} --ref-record {input.ref_record} "
        "--scale {params.scale} --seed {params.seed} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule realign_dera:
    input:
        ref=f"{RA_ART}/ref/meta.json",
        aligned=f"{RA_ART}/aligned/meta.json",
        test=f"{DATA}/arith/test_id.jsonl",
        ref_record=f"{RA_RUNS}/ref/realign_decode.json",
    output:
        records=[f"{RA_RUNS}/{v}/realign_decode.json" for v in RA_DERA],
    log:
        f"{LOGS}/realign/dera.decode.log",
    benchmark:
        f"{LOGS}/realign/dera.decode.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPU,
    params:
        lams=",".join(_lam(x) for x in REALIGN["dera_lambdas"]) if REALIGN else "",
        outs=lambda w, output: ",".join(output.records),
        ref=lambda w, input: os.path.dirname(input.ref),
        aligned=lambda w, input: os.path.dirname(input.aligned),
        config=ra_decode_cfg,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.realign.evaluate dera --ref {params.ref} --aligned {params.aligned} "
        "--lams={params.lams} --test {input.test} --config {params.config:q} "
        "--out {params.outs} --ref-record {input.ref_record} --scale {params.scale} "
        "--seed {params.seed} --threads {threads} --device {params.device} > {log} 2>&1"


rule realign_inra:
    input:
        ref=f"{RA_ART}/ref/meta.json",
        train=f"{DATA}/arith/train.jsonl",
        test=f"{DATA}/arith/test_id.jsonl",
        ref_record=f"{RA_RUNS}/ref/realign_decode.json",
    output:
        meta=f"{RA_ART}/inra/meta.json",
        record=f"{RA_RUNS}/inra/train.json",
        records=[f"{RA_RUNS}/{v}/realign_decode.json" for v in RA_INRA],
    log:
        f"{LOGS}/realign/inra.train.log",
    benchmark:
        f"{LOGS}/realign/inra.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=REALIGN.get("mem_mb", 4000) if REALIGN else 4000,
        runtime=REALIGN.get("runtime", 30) if REALIGN else 30,
        gpu=GPU,
    params:
        lams=",".join(_lam(x) for x in RA_INRA_LAMS) if REALIGN else "",
        outs=lambda w, output: ",".join(output.records),
        ref=lambda w, input: os.path.dirname(input.ref),
        config=ra_inra_cfg,
        out=output_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.realign.train inra --ref {params.ref} --lams={params.lams} "
        "--train {input.train} --test {input.test} --config {params.config:q} "
        "--out {params.out} --variant inra --record {output.record} "
        "--decode-out {params.outs} --ref-record {input.ref_record} "
        "--scale {params.scale} --seed {params.seed} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule realign_sweep:
    input:
        records=[f"{RA_RUNS}/{v}/realign_decode.json" for v in RA_DECODES],
    output:
        record=f"{RA_RUNS}/sweep/realign_sweep.json",
    log:
        f"{LOGS}/realign/sweep.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        records=lambda w, input: ",".join(input.records),
        scale=SCALE_NAME,
        seed=SCALE["seed"],
    shell:
        "python -m methods.realign.sweep --records {params.records} --out {output.record} "
        "--scale {params.scale} --seed {params.seed} > {log} 2>&1"


rule realign_all:
    input:
        RUN_RECORDS.get("realign", []),
    localrule: True
