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
        results=f"{RUNS}/{{paper}}/{{variant}}/lm_eval.results.json.gz",
    log:
        f"{LOGS}/eval/{{paper}}/{{variant}}.lm_eval.log",
    benchmark:
        f"{LOGS}/eval/{{paper}}/{{variant}}.lm_eval.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=eval_mem_mb(4000),
        runtime=60,
        gpu=eval_gpus,
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


# The quantization papers' perplexity (benchmarks/perplexity.py): every artifact that a paper
# listed in eval.ppl.papers evaluates with lm-eval also gets a ppl.json record beside it.
for _paper, _records in ppl_records(PPL).items():
    RUN_RECORDS[_paper] += _records


rule eval_ppl:
    input:
        meta=f"{ART}/{{paper}}/{{variant}}/meta.json",
    output:
        record=f"{RUNS}/{{paper}}/{{variant}}/ppl.json",
        samples=f"{RUNS}/{{paper}}/{{variant}}/ppl.samples.jsonl",
    log:
        f"{LOGS}/eval/{{paper}}/{{variant}}.ppl.log",
    benchmark:
        f"{LOGS}/eval/{{paper}}/{{variant}}.ppl.benchmark.tsv"
    wildcard_constraints:
        paper=one_of(
            PPL.get("papers", []) + (["base"] if PPL.get("base_models") else [])
        ),
    threads: JOB_THREADS
    resources:
        mem_mb=eval_mem_mb(32000),
        runtime=60,
        gpu=eval_gpus,
    params:
        job=job(out="record"),
        hub_dataset=ppl_hub_datasets(PPL),
        artifact=input_dir,
    shell:
        "python -m benchmarks.perplexity {params.job} --artifact {params.artifact} > {log} 2>&1"
