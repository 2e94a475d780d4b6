# OMNIFLOW (physics-grounded flow reasoning): PG-CoT over the pde question sets per backend and
# ablation, PG-CoT forecasts (k = 0/1/5/10 exemplars) and FNO / U-Net surrogates (source-trained,
# k-shot fine-tuned); benchmarks.pde.suite scores answers and predictions into run records.
OMNI = SCALE.get("papers", {}).get("omniflow")


include: "omniflow_helpers.smk"


if OMNI and "omniflow" in PAPERS:
    OMNI_ART = f"{ART}/omniflow"
    OMNI_RUNS = f"{RUNS}/omniflow"
    OMNI_QA = {
        f"qa-{b}-{v}": (b, v)
        for b, spec in OMNI["qa"]["runs"].items()
        for v in spec["variants"]
    }
    # QA runs of an openai backend with `serve`: the job starts the server on its GPU
    # (methods/omniflow/serve.py), waits until /v1/models answers, runs PG-CoT against it.
    OMNI_QA_SERVED = sorted(v for v, (b, _) in OMNI_QA.items() if omni_served(b))
    OMNI_QA_LOCAL = sorted(v for v in OMNI_QA if v not in OMNI_QA_SERVED)
    OMNI_FC_BACKEND = OMNI["forecast"]["backend"]
    OMNI_FC = {f"fc-{OMNI_FC_BACKEND}-k{k}": k for k in OMNI["forecast"]["shots"]}
    OMNI_BL = {
        f"{a}-k{k}": (a, k)
        for a in OMNI["baselines"]["archs"]
        for k in OMNI["baselines"]["shots"]
    }
    # reference rows every forecast must beat: the last input frame held, the zero field
    OMNI_REF = {"ref-persistence": "persistence", "ref-zero": "zero"}
    RUN_RECORDS["omniflow"] = (
        [f"{OMNI_RUNS}/{v}/{s}.json" for v in OMNI_QA for s in ("pgcot", "pde_qa")]
        + [
            f"{OMNI_RUNS}/{v}/{s}.json"
            for v in OMNI_FC
            for s in ("pgcot_forecast", "pde_forecast")
        ]
        + [f"{OMNI_RUNS}/{v}/pde_forecast.json" for v in OMNI_BL]
        + [f"{OMNI_RUNS}/{v}/pde_forecast.json" for v in OMNI_REF]
    )

    rule omniflow_qa:
        input:
            manifest=PDE_MANIFEST,
            backend=lambda w: omni_backend_inputs(OMNI_QA[w.variant][0]),
        output:
            meta=f"{OMNI_ART}/{{variant}}/meta.json",
            record=f"{OMNI_RUNS}/{{variant}}/pgcot.json",
        log:
            f"{LOGS}/omniflow/{{variant}}.log",
        benchmark:
            f"{LOGS}/omniflow/{{variant}}.benchmark.tsv"
        wildcard_constraints:
            variant=one_of(OMNI_QA_LOCAL),
        threads: 1
        resources:
            mem_mb=OMNI["mem_mb"],
            runtime=OMNI["runtime"],
            gpu=lambda w: omni_backend_gpu(OMNI_QA[w.variant][0]),
        params:
            job=job("omniflow", "{variant}"),
            backend=lambda w: OMNI_QA[w.variant][0],
            ablation=lambda w: OMNI_QA[w.variant][1],
            model=lambda w, input: omni_model_option(input.backend),
            data=lambda w, input: os.path.dirname(input.manifest),
        shell:
            "OMP_NUM_THREADS={threads} python -m methods.omniflow.run qa {params.job} "
            "--data {params.data} --backend {params.backend} --ablation {params.ablation} "
            "{params.model} --record {output.record} > {log} 2>&1"

    rule omniflow_qa_served:
        input:
            manifest=PDE_MANIFEST,
        output:
            meta=f"{OMNI_ART}/{{variant}}/meta.json",
            record=f"{OMNI_RUNS}/{{variant}}/pgcot.json",
        log:
            f"{LOGS}/omniflow/{{variant}}.log",
        benchmark:
            f"{LOGS}/omniflow/{{variant}}.benchmark.tsv"
        wildcard_constraints:
            variant=one_of(OMNI_QA_SERVED),
        threads: JOB_THREADS
        resources:
            mem_mb=lambda w: omni_serve(OMNI_QA[w.variant][0]).get("mem_mb", 64000),
            runtime=OMNI["runtime"],
            gpu=GPU,
        params:
            job=job("omniflow", "{variant}"),
            backend=lambda w: OMNI_QA[w.variant][0],
            ablation=lambda w: OMNI_QA[w.variant][1],
            data=lambda w, input: os.path.dirname(input.manifest),
            url=f"{OMNI_ART}/servers/{{variant}}.url",
            # what vllm serves, listed by `claimbench prefetch`
            model_id=lambda w: omni_serve(OMNI_QA[w.variant][0]).get(
                "model", OMNI["backends"][OMNI_QA[w.variant][0]]["model"]
            ),
        shell:
            "python -m methods.omniflow.serve {params.job} --backend {params.backend} "
            "--url-file {params.url} -- "
            "python -m methods.omniflow.run qa {params.job} "
            "--data {params.data} --backend {params.backend} --ablation {params.ablation} "
            "--server-url-file {params.url} --record {output.record} > {log} 2>&1"

    rule omniflow_score_qa:
        input:
            manifest=PDE_MANIFEST,
            meta=f"{OMNI_ART}/{{variant}}/meta.json",
        output:
            record=f"{OMNI_RUNS}/{{variant}}/pde_qa.json",
        log:
            f"{LOGS}/omniflow/{{variant}}.pde_qa.log",
        wildcard_constraints:
            variant=one_of(sorted(OMNI_QA)),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            job=job("omniflow", "{variant}", out="record"),
            data=lambda w, input: os.path.dirname(input.manifest),
            answers=lambda w, input: f"{os.path.dirname(input.meta)}/answers.jsonl",
            method=lambda w: OMNI["qa"]["method_names"][OMNI_QA[w.variant][1]],
            base=lambda w: omni_backend(OMNI_QA[w.variant][0]).get("label")
            or OMNI_QA[w.variant][0],
        shell:
            "python -m benchmarks.pde.suite questions {params.job} --data {params.data} "
            "--answers {params.answers} --method {params.method} --base-model {params.base:q} "
            "--extra-metrics rounds,violations > {log} 2>&1"

    rule omniflow_forecast:
        input:
            manifest=PDE_MANIFEST,
            backend=omni_backend_inputs(OMNI_FC_BACKEND),
        output:
            meta=f"{OMNI_ART}/{{variant}}/meta.json",
            record=f"{OMNI_RUNS}/{{variant}}/pgcot_forecast.json",
        log:
            f"{LOGS}/omniflow/{{variant}}.log",
        benchmark:
            f"{LOGS}/omniflow/{{variant}}.benchmark.tsv"
        wildcard_constraints:
            variant=one_of(sorted(OMNI_FC)),
        threads: 1
        resources:
            mem_mb=OMNI["mem_mb"],
            runtime=OMNI["runtime"],
            gpu=omni_backend_gpu(OMNI_FC_BACKEND),
        params:
            job=job("omniflow", "{variant}"),
            k=lambda w: OMNI_FC[w.variant],
            model=lambda w, input: omni_model_option(input.backend),
            data=lambda w, input: os.path.dirname(input.manifest),
        shell:
            "OMP_NUM_THREADS={threads} python -m methods.omniflow.run forecast {params.job} "
            "--data {params.data} --k {params.k} {params.model} --record {output.record} "
            "> {log} 2>&1"

    rule omniflow_train_baseline:
        input:
            manifest=PDE_MANIFEST,
        output:
            meta=f"{OMNI_ART}/{{arch}}-src/meta.json",
        log:
            f"{LOGS}/omniflow/{{arch}}-src.log",
        benchmark:
            f"{LOGS}/omniflow/{{arch}}-src.benchmark.tsv"
        wildcard_constraints:
            arch=one_of(sorted(OMNI["baselines"]["archs"])),
        threads: JOB_THREADS
        resources:
            mem_mb=OMNI["mem_mb"],
            runtime=OMNI["runtime"],
            gpu=GPU,
        params:
            job=job("omniflow", "{arch}-src"),
            data=lambda w, input: os.path.dirname(input.manifest),
        shell:
            "OMP_NUM_THREADS={threads} python -m methods.omniflow.run train-baseline "
            "{params.job} --arch {wildcards.arch} --data {params.data} > {log} 2>&1"

    rule omniflow_baseline_forecast:
        input:
            manifest=PDE_MANIFEST,
            model=lambda w: f"{OMNI_ART}/{OMNI_BL[w.variant][0]}-src/meta.json",
        output:
            meta=f"{OMNI_ART}/{{variant}}/meta.json",
        log:
            f"{LOGS}/omniflow/{{variant}}.log",
        benchmark:
            f"{LOGS}/omniflow/{{variant}}.benchmark.tsv"
        wildcard_constraints:
            variant=one_of(sorted(OMNI_BL)),
        threads: JOB_THREADS
        resources:
            mem_mb=OMNI["mem_mb"],
            runtime=OMNI["runtime"],
            gpu=GPU,
        params:
            job=job("omniflow", "{variant}"),
            model=lambda w, input: os.path.dirname(input.model),
            k=lambda w: OMNI_BL[w.variant][1],
            data=lambda w, input: os.path.dirname(input.manifest),
        shell:
            "OMP_NUM_THREADS={threads} python -m methods.omniflow.run baseline-forecast "
            "{params.job} --model {params.model} --k {params.k} --data {params.data} "
            "> {log} 2>&1"

    rule omniflow_score_forecast:
        input:
            manifest=PDE_MANIFEST,
            meta=f"{OMNI_ART}/{{variant}}/meta.json",
        output:
            record=f"{OMNI_RUNS}/{{variant}}/pde_forecast.json",
        log:
            f"{LOGS}/omniflow/{{variant}}.pde_forecast.log",
        wildcard_constraints:
            variant=one_of(sorted(OMNI_FC) + sorted(OMNI_BL)),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            job=job("omniflow", "{variant}", out="record"),
            data=lambda w, input: os.path.dirname(input.manifest),
            preds=lambda w, input: f"{os.path.dirname(input.meta)}/predictions",
            regimes=lambda w: ",".join(
                omni_regimes(
                    OMNI_FC[w.variant]
                    if w.variant in OMNI_FC
                    else OMNI_BL[w.variant][1]
                )
            ),
            method=lambda w: (
                "omniflow" if w.variant in OMNI_FC else OMNI_BL[w.variant][0]
            ),
            base=lambda w: (
                omni_backend(OMNI_FC_BACKEND).get("label", OMNI_FC_BACKEND)
                if w.variant in OMNI_FC
                else f"{OMNI_BL[w.variant][0]}-src"
            ),
        shell:
            "python -m benchmarks.pde.suite forecast {params.job} --data {params.data} "
            "--regimes {params.regimes} --predictions {params.preds} "
            "--method {params.method} --base-model {params.base:q} > {log} 2>&1"

    rule omniflow_score_reference:
        input:
            manifest=PDE_MANIFEST,
            preds=lambda w: expand(
                f"{PDE_DATA}/reference/{OMNI_REF[w.variant]}/{{regime}}.npz",
                regime=PDE_REGIMES,
            ),
        output:
            record=f"{OMNI_RUNS}/{{variant}}/pde_forecast.json",
        log:
            f"{LOGS}/omniflow/{{variant}}.pde_forecast.log",
        benchmark:
            f"{LOGS}/omniflow/{{variant}}.benchmark.tsv"
        wildcard_constraints:
            variant=one_of(sorted(OMNI_REF)),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            job=job("omniflow", "{variant}", out="record"),
            data=lambda w, input: os.path.dirname(input.manifest),
            preds=lambda w, input: os.path.dirname(input.preds[0]),
            regimes=",".join(PDE_REGIMES),
            method=lambda w: OMNI_REF[w.variant],
        shell:
            "python -m benchmarks.pde.suite forecast {params.job} --data {params.data} "
            "--regimes {params.regimes} --predictions {params.preds} "
            "--method {params.method} --base-model reference > {log} 2>&1"

    rule omniflow_all:
        input:
            RUN_RECORDS["omniflow"],
        localrule: True
