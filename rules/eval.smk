# The lm-eval suite: one job (one process, torch loaded once) per artifact for all its tasks.
LM_EVAL_DATA = [
    f"{DATA}/arith/test_id.jsonl",
    f"{DATA}/arith/test_ood.jsonl",
    f"{DATA}/arith/mc_test.jsonl",
    f"{DATA}/text/test.jsonl",
]


rule eval_lm:
    input:
        meta=f"{ART}/{{paper}}/{{variant}}/meta.json",
        data=LM_EVAL_DATA,
    output:
        record=f"{RUNS}/{{paper}}/{{variant}}/lm_eval.json",
        samples=f"{RUNS}/{{paper}}/{{variant}}/lm_eval.samples.jsonl",
    log:
        f"{LOGS}/eval/{{paper}}/{{variant}}.lm_eval.log",
    benchmark:
        f"{LOGS}/eval/{{paper}}/{{variant}}.lm_eval.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    params:
        job=job(out="record"),
        lm_eval_tasks=lm_eval_tasks,
        options=lm_eval_options,
        artifact=input_dir,
        data=data_dir,
    shell:
        "python -m benchmarks.lm_eval_suite {params.job} --artifact {params.artifact} "
        "--data-dir {params.data} --tasks {params.lm_eval_tasks} {params.options} "
        "> {log} 2>&1"
