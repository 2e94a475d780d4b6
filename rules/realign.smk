# Flexible Realignment (TrRa, InRa) with the DeRa baseline: a slow-thinking reference (SFT on
# the world's long traces with a check block), an efficient aligned model (the reference SFT'd
# on the same traces without the check block), TrRa over the lambda grid, the KL-direction
# switch, the code-faithful mode, TrRa-iter, DeRa decode-time mixing, InRa dual-path decoding.
REALIGN = SCALE.get("papers", {}).get("realign")
RA_ART = f"{ART}/realign"
RA_RUNS = f"{RUNS}/realign"
# Training traces: the world's own (check sentence before the answer, which it states) or, with
# check_sentence: after, the same traces with the check behind the answer
# (methods/realign/world.py).
RA_CHECK_AFTER = bool(REALIGN) and REALIGN.get("check_sentence", "before") == "after"
RA_TRAIN = (
    f"{RA_ART}/world/train_check_after.jsonl"
    if RA_CHECK_AFTER
    else f"{DATA}/arith/train.jsonl"
)


include: "realign_helpers.smk"


# {variant: (lambda, direction, mode, aligned teacher variant, seed)}; the lambda sweep runs
# every seed of trra.seeds (default: the scale's seed), the first keeping the bare name and the
# others named trra-lam<lambda>-s<seed> (the small scale runs 3); the other runs use the first.
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

# Paper scale: response lengths and token reduction (Table 1) from the lm-eval samples of the
# realign_* tasks (8 samples per problem), for every lm-eval variant but the reference.
RA_PAPER_TASKS = ["realign_aime24", "realign_aime25", "realign_math500"]
RA_TOKENS = (
    [v for v in REALIGN["lm_eval"]["variants"] if v != "ref"]
    if REALIGN
    and set(RA_PAPER_TASKS) <= set(REALIGN["lm_eval"].get("tasks", []))
    and "ref" in REALIGN["lm_eval"]["variants"]
    else []
)

if REALIGN and "realign" in PAPERS:
    RUN_RECORDS["realign"] = (
        [f"{RA_RUNS}/{v}/realign_decode.json" for v in RA_DECODES]
        + [f"{RA_RUNS}/{v}/train.json" for v in [*RA_BUILT, *sorted(RA_TRRA), "inra"]]
        + [f"{RA_RUNS}/{v}/lm_eval.json" for v in REALIGN["lm_eval"]["variants"]]
        + [f"{RA_RUNS}/sweep/realign_sweep.json"]
        + [f"{RA_RUNS}/{v}/realign_tokens.json" for v in RA_TOKENS]
    )


rule realign_world:
    input:
        src=f"{DATA}/arith/train.jsonl",
    output:
        f"{RA_ART}/world/train_check_after.jsonl",
    log:
        f"{LOGS}/realign/world.log",
    localrule: True
    shell:
        "python -m methods.realign.world --src {input.src} --dest {output} > {log} 2>&1"


ruleorder: realign_link > realign_ref
ruleorder: realign_link > realign_aligned


rule realign_ref:
    input:
        start=lambda w: f"{ART}/base/{REALIGN['start_model']}/meta.json",
        train=RA_TRAIN,
    output:
        meta=f"{RA_ART}/ref/meta.json",
        record=f"{RA_RUNS}/ref/train.json",
    log:
        f"{LOGS}/realign/ref.train.log",
    benchmark:
        f"{LOGS}/realign/ref.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=REALIGN["mem_mb"] if REALIGN else 4000,
        runtime=REALIGN["runtime"] if REALIGN else 30,
        gpu=train_gpus("realign"),
    params:
        launch=launch(),
        job=job("realign", "ref"),
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.posttrain.cli sft {params.job} --settings reference_sft "
        "--families-key families --start {params.start} --train {input.train} "
        "--record {output.record} > {log} 2>&1"


rule realign_aligned:
    input:
        start=f"{RA_ART}/ref/meta.json",
        train=RA_TRAIN,
    output:
        meta=f"{RA_ART}/aligned/meta.json",
        record=f"{RA_RUNS}/aligned/train.json",
    log:
        f"{LOGS}/realign/aligned.train.log",
    benchmark:
        f"{LOGS}/realign/aligned.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=REALIGN["mem_mb"] if REALIGN else 4000,
        runtime=REALIGN["runtime"] if REALIGN else 30,
        gpu=GPU,  # one process: a 1.5B model on one GPU (its loop has no engine path)
    params:
        launch=launch(),
        job=job("realign", "aligned"),
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.realign.train sft {params.job} --ref {params.start} "
        "--train {input.train} --record {output.record} > {log} 2>&1"


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
        job=job("realign", "{variant}"),
        src=lambda w, input: os.path.dirname(input.src),
    shell:
        "python -m methods.realign.link {params.job} --src {params.src} > {log} 2>&1"


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
        mem_mb=REALIGN["decode_mem_mb"] if REALIGN else 4000,
        runtime=30,
        gpu=GPU,
    params:
        job=job("realign", "ref", out="record"),
        model=input_dir,
    shell:
        "python -m methods.realign.evaluate single {params.job} --model {params.model} "
        "--test {input.test} > {log} 2>&1"


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
        mem_mb=REALIGN["decode_mem_mb"] if REALIGN else 4000,
        runtime=30,
        gpu=GPU,
    params:
        job=job("realign", "aligned", out="record"),
        model=input_dir,
    shell:
        "python -m methods.realign.evaluate single {params.job} --model {params.model} "
        "--test {input.test} --ref-record {input.ref_record} > {log} 2>&1"


rule realign_trra:
    input:
        ref=f"{RA_ART}/ref/meta.json",
        aligned=lambda w: f"{RA_ART}/{RA_TRRA[w.variant][3]}/meta.json",
        train=RA_TRAIN,
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
        mem_mb=REALIGN["mem_mb"] if REALIGN else 4000,
        runtime=REALIGN["runtime"] if REALIGN else 30,
        gpu=train_gpus("realign"),
    params:
        launch=launch(),
        job=ra_trra_job,
        lam=lambda w: RA_TRRA[w.variant][0],
        direction=lambda w: RA_TRRA[w.variant][1],
        mode=lambda w: RA_TRRA[w.variant][2],
        ref=lambda w, input: os.path.dirname(input.ref),
        aligned=lambda w, input: os.path.dirname(input.aligned),
    shell:
        "{params.launch} -m methods.realign.train trra {params.job} --ref {params.ref} "
        "--aligned {params.aligned} --lam={params.lam} --direction {params.direction} "
        "--mode {params.mode} --train {input.train} --test {input.test} "
        "--record {output.record} --decode-out {output.decode} "
        "--ref-record {input.ref_record} > {log} 2>&1"


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
        mem_mb=REALIGN["decode_mem_mb"] if REALIGN else 4000,
        runtime=30,
        gpu=GPU,
    params:
        job=ra_runs_job("dera"),
        ref=lambda w, input: os.path.dirname(input.ref),
        aligned=lambda w, input: os.path.dirname(input.aligned),
    shell:
        "python -m methods.realign.evaluate dera {params.job} --ref {params.ref} "
        "--aligned {params.aligned} --test {input.test} "
        "--ref-record {input.ref_record} > {log} 2>&1"


rule realign_inra:
    input:
        ref=f"{RA_ART}/ref/meta.json",
        train=RA_TRAIN,
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
        mem_mb=REALIGN["mem_mb"] if REALIGN else 4000,
        runtime=REALIGN["runtime"] if REALIGN else 30,
        gpu=GPU,  # one process: a 1.5B model on one GPU (its loop has no engine path)
    params:
        launch=launch(),
        job=job("realign", "inra"),
        ref=lambda w, input: os.path.dirname(input.ref),
        runs=lambda w: RA_RUNS,
    shell:
        "{params.launch} -m methods.realign.train inra {params.job} --ref {params.ref} "
        "--train {input.train} --test {input.test} --record {output.record} "
        "--runs {params.runs} --ref-record {input.ref_record} > {log} 2>&1"


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
        job=job("realign", "sweep", out="record"),
        records=lambda w, input: ",".join(input.records),
    shell:
        "python -m methods.realign.sweep {params.job} --records {params.records} > {log} 2>&1"


rule realign_paper_tokens:
    input:
        model=f"{RA_ART}/{{variant}}/meta.json",
        samples=f"{RA_RUNS}/{{variant}}/lm_eval.samples.jsonl",
        ref_model=f"{RA_ART}/ref/meta.json",
        ref_samples=f"{RA_RUNS}/ref/lm_eval.samples.jsonl",
    output:
        record=f"{RA_RUNS}/{{variant}}/realign_tokens.json",
    log:
        f"{LOGS}/realign/{{variant}}.tokens.log",
    wildcard_constraints:
        variant=one_of(RA_TOKENS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        job=job("realign", "{variant}", out="record"),
        model=lambda w, input: os.path.dirname(input.model),
        ref_model=lambda w, input: os.path.dirname(input.ref_model),
    shell:
        "python -m methods.realign.paper_tokens {params.job} --model {params.model} "
        "--samples {input.samples} --ref-model {params.ref_model} "
        "--ref-samples {input.ref_samples} > {log} 2>&1"


rule realign_all:
    input:
        RUN_RECORDS.get("realign", []),
    localrule: True
