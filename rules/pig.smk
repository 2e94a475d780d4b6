# PIG (hybrid-tower text-to-video retrieval): data -> canonical splits -> theta_0 -> arms x seeds
# -> retrieval suite (R@K run records) + the measured inference-cost records.
PIG = SCALE.get("papers", {}).get("pig")


include: "pig_helpers.smk"


if PIG:
    PIG_GEN = f"{DATA}/moving_shapes"
    PIG_DATA = f"{DATA}/pig"
    PIG_ART = f"{ART}/pig"
    PIG_RUNS = f"{RUNS}/pig"
    PIG_BENCH = PIG["benchmarks"]
    PIG_ARM_SEEDS = [(a, s) for a in PIG["arms"] for s in PIG["seeds"]] + [
        (a, s) for a in PIG["ablations"] for s in PIG["ablation_seeds"]
    ]
    PIG_VARIANTS = [
        f"{b}-{a}-s{s}" for b in sorted(PIG_BENCH) for a, s in PIG_ARM_SEEDS
    ]
    PIG_COST = PIG["cost"]
    PIG_COST_VARIANTS = [
        f"{PIG_COST['benchmark']}-{arm}-s{PIG_COST['seed']}"
        for arm in ("two_tower", "pig")
    ]
    RUN_RECORDS["pig"] = [f"{PIG_RUNS}/{v}/retrieval.json" for v in PIG_VARIANTS] + [
        f"{PIG_RUNS}/{v}/cost.json" for v in PIG_COST_VARIANTS
    ]

    rule pig_generate:
        output:
            manifest=f"{PIG_GEN}/manifest.json",
        log:
            f"{LOGS}/pig/generate.log",
        resources:
            mem_mb=4000,
            runtime=10,
        params:
            job=job("pig", "moving_shapes"),
        shell:
            "python -m benchmarks.data.moving_shapes {params.job} > {log} 2>&1"

    rule pig_prepare:
        input:
            generated=pig_generated,
        output:
            manifest=f"{PIG_DATA}/{{split}}.manifest.json",
        log:
            f"{LOGS}/pig/prepare.{{split}}.log",
        wildcard_constraints:
            split=one_of(sorted(PIG["splits"])),
        resources:
            runtime=30,
            mem_mb=8000,
        params:
            job=job("pig", "{split}"),
            generated=PIG_GEN,
        shell:
            "python -m benchmarks.retrieval.prepare {params.job} "
            "--generated {params.generated} > {log} 2>&1"

    rule pig_pretrain:
        input:
            splits=pig_pretrain_inputs,
        output:
            meta=f"{PIG_ART}/theta0/meta.json",
        log:
            f"{LOGS}/pig/theta0.log",
        benchmark:
            f"{LOGS}/pig/theta0.benchmark.tsv"
        threads: JOB_THREADS
        resources:
            mem_mb=PIG["mem_mb"],
            runtime=120,
            gpu=GPU,
        params:
            **pig_init_param(),
            job=job("pig", "theta0"),
            data=PIG_DATA,
        shell:
            "python -m methods.pig.build pretrain {params.job} --data {params.data} "
            "> {log} 2>&1"

    rule pig_finetune:
        input:
            theta0=f"{PIG_ART}/theta0/meta.json",
            splits=pig_finetune_inputs,
        output:
            meta=f"{PIG_ART}/{{bench}}-{{arm}}-s{{seed}}/meta.json",
        log:
            f"{LOGS}/pig/{{bench}}-{{arm}}-s{{seed}}.log",
        benchmark:
            f"{LOGS}/pig/{{bench}}-{{arm}}-s{{seed}}.benchmark.tsv"
        wildcard_constraints:
            bench=one_of(sorted(PIG_BENCH)),
            arm=one_of(sorted({a for a, _ in PIG_ARM_SEEDS})),
            seed=r"\d+",
        threads: JOB_THREADS
        resources:
            mem_mb=PIG["mem_mb"],
            runtime=600,
            gpu=GPU,
        params:
            job=job("pig", "{arm}", seed="{seed}"),
            init=lambda wildcards, input: os.path.dirname(input.theta0),
            data=PIG_DATA,
        shell:
            "python -m methods.pig.build finetune {params.job} --data {params.data} "
            "--init {params.init} --benchmark {wildcards.bench} > {log} 2>&1"

    rule pig_retrieval:
        input:
            meta=f"{PIG_ART}/{{bench}}-{{arm}}-s{{seed}}/meta.json",
        output:
            record=f"{PIG_RUNS}/{{bench}}-{{arm}}-s{{seed}}/retrieval.json",
            samples=f"{PIG_RUNS}/{{bench}}-{{arm}}-s{{seed}}/retrieval.samples.jsonl",
        log:
            f"{LOGS}/pig/{{bench}}-{{arm}}-s{{seed}}.retrieval.log",
        wildcard_constraints:
            bench=one_of(sorted(PIG_BENCH)),
            arm=one_of(sorted({a for a, _ in PIG_ARM_SEEDS})),
            seed=r"\d+",
        resources:
            # MSR-VTT 3k: a 59,800 x 2,990 float64 similarity matrix and its float32 copy
            mem_mb=max(4000, PIG["mem_mb"] // 2),
            runtime=30,
        params:
            job=job("pig", "{arm}", out="record", seed="{seed}"),
            artifact=input_dir,
            tests=pig_tests,
            data=PIG_DATA,
        shell:
            "python -m benchmarks.retrieval.suite {params.job} --artifact {params.artifact} "
            "--data {params.data} --tests {params.tests} > {log} 2>&1"

    rule pig_cost:
        input:
            baseline=f"{PIG_ART}/{PIG_COST_VARIANTS[0]}/meta.json",
            pig=f"{PIG_ART}/{PIG_COST_VARIANTS[1]}/meta.json",
            test=f"{PIG_DATA}/{PIG_COST['test']}.manifest.json",
        output:
            baseline=f"{PIG_RUNS}/{PIG_COST_VARIANTS[0]}/cost.json",
            pig=f"{PIG_RUNS}/{PIG_COST_VARIANTS[1]}/cost.json",
        log:
            f"{LOGS}/pig/cost.log",
        threads: JOB_THREADS
        resources:
            mem_mb=PIG["mem_mb"],
            runtime=30,
            gpu=GPU,
        params:
            job=job("pig", "cost", out="pig", seed=PIG_COST["seed"]),
            baseline=lambda wildcards, input: os.path.dirname(input.baseline),
            pig=lambda wildcards, input: os.path.dirname(input.pig),
            data=lambda wildcards, input: os.path.dirname(input.test),
        shell:
            "python -m methods.pig.cost {params.job} --baseline {params.baseline} "
            "--pig {params.pig} --data {params.data} "
            "--out-baseline {output.baseline} > {log} 2>&1"


rule pig_all:
    input:
        RUN_RECORDS.get("pig", []),
    localrule: True
