# Locate -> Steer -> Improve (actionable MI survey, arXiv 2601.14004): tiny Llamas trained on
# worlds with known ground truth (induction, mode-controlled text, planted trigger -> REFUSE),
# then patching / probes / steering / ablation measured on them; a real-LM contrast at small and
# paper scale. Equations and choices: methods/mi_steer/README.md.
MI = SCALE.get("papers", {}).get("mi_steer")
MI_DATA = f"{DATA}/mi_worlds"
MI_SUITES = {"induction": ["locate"], "behaviour": ["probe", "steer", "improve"]}

# {variant: (world, seed)}: the first seed keeps the world's name, later seeds get -s<seed>.
MI_VARIANTS = {
    (world if s == MI["seeds"][0] else f"{world}-s{s}"): (world, s)
    for world in (MI["models"] if MI else {})
    for s in MI["seeds"]
}
MI_CONTRAST = (MI or {}).get("contrast")
MI_CONTRAST_VARIANTS = (
    [f"{MI_CONTRAST['model']}-{b}" for b in sorted(MI_CONTRAST["behaviours"])]
    if MI_CONTRAST
    else []
)
# The steered model through lm-eval's `steered` model on registered tasks (paper scale).
MI_STEERED = (MI_CONTRAST or {}).get("steered_eval")
MI_STEERED_VARIANTS = MI_CONTRAST_VARIANTS if MI_STEERED else []

if MI and "mi_steer" in PAPERS:
    RUN_RECORDS["mi_steer"] = (
        [
            f"{RUNS}/mi_steer/{v}/{suite}.json"
            for v, (world, _) in sorted(MI_VARIANTS.items())
            for suite in MI_SUITES[world]
        ]
        + [
            f"{RUNS}/mi_steer/{v}/sensitivity.json"
            for v, (world, _) in sorted(MI_VARIANTS.items())
            if world == "behaviour"
        ]
        + [f"{RUNS}/mi_steer/{v}/contrast.json" for v in MI_CONTRAST_VARIANTS]
        + [f"{RUNS}/mi_steer/{v}/steered_lm_eval.json" for v in MI_STEERED_VARIANTS]
    )


# The job options of a tiny-world job: variant = the wildcard, seed = the variant's seed.
MI_JOB = job("mi_steer", "{variant}", seed=lambda w: MI_VARIANTS[w.variant][1])
MI_JOB_RECORD = job(
    "mi_steer", "{variant}", out="record", seed=lambda w: MI_VARIANTS[w.variant][1]
)


rule mi_steer_worlds:
    output:
        meta=f"{MI_DATA}/meta.json",
    log:
        f"{LOGS}/mi_steer/worlds.log",
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        job=job("mi_steer", "mi_worlds"),
    shell:
        "python -m benchmarks.data.mi_worlds {params.job} > {log} 2>&1"


rule mi_steer_train:
    input:
        worlds=f"{MI_DATA}/meta.json",
    output:
        meta=f"{ART}/mi_steer/{{variant}}/meta.json",
    log:
        f"{LOGS}/mi_steer/{{variant}}.train.log",
    benchmark:
        f"{LOGS}/mi_steer/{{variant}}.train.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(MI_VARIANTS)),
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: MI["mem_mb"],
        runtime=lambda w: MI["runtime"],
        gpu=GPU,
    params:
        job=MI_JOB,
        world=lambda w: MI_VARIANTS[w.variant][0],
        data=input_dir,
    shell:
        "python -m methods.mi_steer.train {params.job} --world {params.world} "
        "--data {params.data} > {log} 2>&1"


rule mi_steer_suite:
    input:
        meta=f"{ART}/mi_steer/{{variant}}/meta.json",
        worlds=f"{MI_DATA}/meta.json",
    output:
        record=f"{RUNS}/mi_steer/{{variant}}/{{suite}}.json",
    log:
        f"{LOGS}/mi_steer/{{variant}}.{{suite}}.log",
    benchmark:
        f"{LOGS}/mi_steer/{{variant}}.{{suite}}.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(MI_VARIANTS)),
        suite="locate|probe|steer|improve",
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: MI["mem_mb"],
        runtime=lambda w: MI["runtime"],
        gpu=GPU,
    params:
        job=MI_JOB_RECORD,
        artifact=input_dir,
        data=lambda w, input: os.path.dirname(input.worlds),
    shell:
        "python -m methods.mi_steer.suite {wildcards.suite} {params.job} "
        "--artifact {params.artifact} --data {params.data} > {log} 2>&1"


rule mi_steer_sensitivity:
    input:
        meta=f"{ART}/mi_steer/{{variant}}/meta.json",
        worlds=f"{MI_DATA}/meta.json",
    output:
        record=f"{RUNS}/mi_steer/{{variant}}/sensitivity.json",
        scores=f"{ART}/mi_steer/{{variant}}/layer_sensitivity.json",
    log:
        f"{LOGS}/mi_steer/{{variant}}.sensitivity.log",
    wildcard_constraints:
        variant=one_of(sorted(MI_VARIANTS)),
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: MI["mem_mb"],
        runtime=lambda w: MI["runtime"],
        gpu=GPU,
    params:
        job=MI_JOB_RECORD,
        artifact=input_dir,
        data=lambda w, input: os.path.dirname(input.worlds),
    shell:
        "python -m methods.mi_steer.suite sensitivity {params.job} "
        "--artifact {params.artifact} --data {params.data} --sensitivity {output.scores} "
        "> {log} 2>&1"


rule mi_steer_contrast:
    input:
        model=lambda w: f"{ART}/base/{MI_CONTRAST['model']}/meta.json",
        text=f"{DATA}/text/test.jsonl",
    output:
        record=f"{RUNS}/mi_steer/{{variant}}/contrast.json",
        steer=f"{ART}/mi_steer/{{variant}}/steer.pt",
    log:
        f"{LOGS}/mi_steer/{{variant}}.contrast.log",
    benchmark:
        f"{LOGS}/mi_steer/{{variant}}.contrast.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(MI_CONTRAST_VARIANTS),
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: MI["contrast_mem_mb"],
        runtime=lambda w: MI["contrast_runtime"],
        gpu=GPU,
    params:
        job=job("mi_steer", "{variant}", out="record"),
        behaviour=lambda w: w.variant[len(MI_CONTRAST["model"]) + 1 :],
        artifact=lambda w, input: os.path.dirname(input.model),
    shell:
        "python -m methods.mi_steer.contrast {params.job} --artifact {params.artifact} "
        "--behaviour {params.behaviour} --text {input.text} --steer-out {output.steer} "
        "> {log} 2>&1"


rule mi_steer_steered_eval:
    input:
        model=lambda w: f"{ART}/base/{MI_CONTRAST['model']}/meta.json",
        steer=f"{ART}/mi_steer/{{variant}}/steer.pt",
    output:
        record=f"{RUNS}/mi_steer/{{variant}}/steered_lm_eval.json",
    log:
        f"{LOGS}/mi_steer/{{variant}}.steered_lm_eval.log",
    benchmark:
        f"{LOGS}/mi_steer/{{variant}}.steered_lm_eval.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(MI_STEERED_VARIANTS),
    threads: JOB_THREADS
    resources:
        mem_mb=lambda w: MI_STEERED.get("mem_mb", 64000),
        runtime=lambda w: MI_STEERED.get("runtime", 240),
        gpu=GPU,
    params:
        job=job("mi_steer", "{variant}", out="record"),
        lm_eval_tasks=lambda w: ",".join(MI_STEERED["tasks"]),
        artifact=lambda w, input: os.path.dirname(input.model),
        chat=lambda w: (
            "--chat-template" if MI_CONTRAST.get("chat_template", True) else ""
        ),
        base=lambda w: MI_CONTRAST["model"],
        data=DATA,
    shell:
        "python -m benchmarks.lm_eval_suite {params.job} --artifact {params.artifact} "
        "--data-dir {params.data} --steer {input.steer} --backend hf "
        "--tasks {params.lm_eval_tasks} "
        "--method mi_steer-steered --base-model {params.base} {params.chat} > {log} 2>&1"


rule mi_steer_all:
    input:
        RUN_RECORDS.get("mi_steer", []),
    localrule: True
