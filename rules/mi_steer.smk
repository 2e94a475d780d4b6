# Locate -> Steer -> Improve (actionable MI survey, arXiv 2601.14004): tiny Llamas trained on
# worlds with known ground truth (induction, mode-controlled text, planted trigger -> REFUSE),
# then patching / probes / steering / ablation measured on them; a real-LM contrast at small and
# paper scale. Spec ../shared/specs/mi-steer.md.
MI = SCALE.get("papers", {}).get("mi_steer")
MI_DATA = f"{DATA}/mi_worlds"
MI_SUITES = {"induction": ["locate"], "behaviour": ["probe", "steer", "improve"]}

# {variant: (world, seed)}: the first seed keeps the world's name, later seeds get -s<seed>.
MI_VARIANTS = {
    (world if s == MI["seeds"][0] else f"{world}-s{s}"): (world, s)
    for world in (MI.get("models", {}) if MI else {})
    for s in MI["seeds"]
}
MI_CONTRAST = (MI or {}).get("contrast")
MI_CONTRAST_VARIANTS = (
    [f"{MI_CONTRAST['model']}-{b}" for b in sorted(MI_CONTRAST["behaviours"])]
    if MI_CONTRAST
    else []
)

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
    )


rule mi_steer_worlds:
    output:
        meta=f"{MI_DATA}/meta.json",
    log:
        f"{LOGS}/mi_steer/worlds.log",
    resources:
        runtime=10,
    params:
        seed=SCALE["seed"],
        args=lambda w: " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in sorted(MI.get("worlds", {}).items())
        ),
        out=output_dir,
    shell:
        "python -m benchmarks.data.mi_worlds --out {params.out} --seed {params.seed} "
        "{params.args} > {log} 2>&1"


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
        mem_mb=MI.get("mem_mb", 2000) if MI else 2000,
        runtime=MI.get("runtime", 30) if MI else 30,
        gpu=GPU,
    params:
        world=lambda w: MI_VARIANTS[w.variant][0],
        seed=lambda w: MI_VARIANTS[w.variant][1],
        spec=lambda w: json.dumps(
            MI["models"][MI_VARIANTS[w.variant][0]], sort_keys=True
        ),
        data=input_dir,
        out=output_dir,
    shell:
        "python -m methods.mi_steer.train --world {params.world} --data {params.data} "
        "--spec {params.spec:q} --seed {params.seed} --threads {threads} --out {params.out} "
        "> {log} 2>&1"


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
        mem_mb=MI.get("mem_mb", 2000) if MI else 2000,
        runtime=MI.get("runtime", 30) if MI else 30,
        gpu=GPU,
    params:
        config=lambda w: json.dumps(MI.get(w.suite) or {}, sort_keys=True),
        seed=lambda w: MI_VARIANTS[w.variant][1],
        artifact=input_dir,
        data=lambda w, input: os.path.dirname(input.worlds),
        scale=SCALE_NAME,
    shell:
        "python -m methods.mi_steer.suite {wildcards.suite} --artifact {params.artifact} "
        "--data {params.data} --config {params.config:q} --record {output.record} "
        "--scale {params.scale} --variant {wildcards.variant} --seed {params.seed} "
        "--threads {threads} > {log} 2>&1"


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
        mem_mb=MI.get("mem_mb", 2000) if MI else 2000,
        runtime=MI.get("runtime", 30) if MI else 30,
        gpu=GPU,
    params:
        config=lambda w: json.dumps(MI.get("sensitivity") or {}, sort_keys=True),
        seed=lambda w: MI_VARIANTS[w.variant][1],
        artifact=input_dir,
        data=lambda w, input: os.path.dirname(input.worlds),
        scale=SCALE_NAME,
    shell:
        "python -m methods.mi_steer.suite sensitivity --artifact {params.artifact} "
        "--data {params.data} --config {params.config:q} --record {output.record} "
        "--sensitivity {output.scores} --scale {params.scale} --variant {wildcards.variant} "
        "--seed {params.seed} --threads {threads} > {log} 2>&1"


rule mi_steer_contrast:
    input:
        model=lambda w: f"{ART}/base/{MI_CONTRAST['model']}/meta.json",
        text=f"{DATA}/text/test.jsonl",
    output:
        record=f"{RUNS}/mi_steer/{{variant}}/contrast.json",
    log:
        f"{LOGS}/mi_steer/{{variant}}.contrast.log",
    benchmark:
        f"{LOGS}/mi_steer/{{variant}}.contrast.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(MI_CONTRAST_VARIANTS),
    threads: JOB_THREADS
    resources:
        mem_mb=MI.get("contrast_mem_mb", 8000) if MI else 8000,
        runtime=MI.get("contrast_runtime", 120) if MI else 120,
        gpu=GPU,
    params:
        config=lambda w: json.dumps(MI_CONTRAST, sort_keys=True),
        behaviour=lambda w: w.variant[len(MI_CONTRAST["model"]) + 1 :],
        artifact=lambda w, input: os.path.dirname(input.model),
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.mi_steer.contrast --artifact {params.artifact} "
        "--behaviour {params.behaviour} --config {params.config:q} --text {input.text} "
        "--record {output.record} --scale {params.scale} --variant {wildcards.variant} "
        "--seed {params.seed} --device {params.device} --threads {threads} > {log} 2>&1"


rule mi_steer_all:
    input:
        RUN_RECORDS.get("mi_steer", []),
    localrule: True
