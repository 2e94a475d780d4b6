# G-OPD / ExOPD: a student (the tiny base after a short SFT, left with headroom), a same-size
# teacher improved by GRPO, and G-OPD runs from the student over the lambda grid (reference =
# the student's start); every artifact evaluated by lm-eval.
GOPD = SCALE.get("papers", {}).get("gopd")
GOPD_STUDENT = (
    f"{ART}/gopd/student/meta.json"
    if GOPD and GOPD.get("student_sft")
    else f"{ART}/base/{GOPD['student_model'] if GOPD else 'none'}/meta.json"
)
GOPD_TEACHER = (
    f"{ART}/base/{GOPD['teacher_model']}/meta.json"
    if GOPD and GOPD.get("teacher_model")
    else f"{ART}/gopd/teacher/meta.json"
)
# {variant: (lambda, seed)}: lam<value>, later seeds get -s<seed>.
GOPD_VARIANTS = {
    (f"lam{lam}" if s == GOPD["seeds"][0] else f"lam{lam}-s{s}"): (lam, s)
    for lam in (GOPD["lambdas"] if GOPD else [])
    for s in GOPD["seeds"]
}
GOPD_BUILT = (["student"] if GOPD and GOPD.get("student_sft") else []) + (
    ["teacher"] if GOPD and not GOPD.get("teacher_model") else []
)

if GOPD and "gopd" in PAPERS:
    RUN_RECORDS["gopd"] = [
        f"{RUNS}/gopd/{v}/{suite}.json"
        for v in sorted(GOPD_VARIANTS) + GOPD_BUILT
        for suite in ("lm_eval", "train")
    ]


rule gopd_student:
    input:
        start=lambda w: f"{ART}/base/{GOPD['student_model']}/meta.json",
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/gopd/student/meta.json",
        record=f"{RUNS}/gopd/student/train.json",
    log:
        f"{LOGS}/gopd/student.train.log",
    benchmark:
        f"{LOGS}/gopd/student.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPU,
    params:
        config=lambda w: json.dumps(GOPD["student_sft"], sort_keys=True),
        start=lambda w, input: os.path.dirname(input.start),
        out=output_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.posttrain.cli sft --start {params.start} --train {input.train} "
        "--valid {input.valid} --config {params.config:q} --out {params.out} --variant student "
        "--paper gopd --record {output.record} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule gopd_teacher:
    input:
        start=GOPD_STUDENT,
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/gopd/teacher/meta.json",
        record=f"{RUNS}/gopd/teacher/train.json",
    log:
        f"{LOGS}/gopd/teacher.train.log",
    benchmark:
        f"{LOGS}/gopd/teacher.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=GPU,
    params:
        config=lambda w: json.dumps(GOPD["teacher_grpo"], sort_keys=True),
        start=lambda w, input: os.path.dirname(input.start),
        out=output_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.posttrain.cli grpo --start {params.start} --train {input.train} "
        "--valid {input.valid} --config {params.config:q} --out {params.out} --variant teacher "
        "--paper gopd --record {output.record} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule gopd_train:
    input:
        student=GOPD_STUDENT,
        teacher=GOPD_TEACHER,
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/gopd/{{variant}}/meta.json",
        record=f"{RUNS}/gopd/{{variant}}/train.json",
    log:
        f"{LOGS}/gopd/{{variant}}.train.log",
    benchmark:
        f"{LOGS}/gopd/{{variant}}.train.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(GOPD_VARIANTS)),
    threads: JOB_THREADS
    resources:
        mem_mb=GOPD.get("mem_mb", 4000) if GOPD else 4000,
        runtime=GOPD.get("runtime", 30) if GOPD else 30,
        gpu=GPU,
    params:
        lam=lambda w: GOPD_VARIANTS[w.variant][0],
        seed=lambda w: GOPD_VARIANTS[w.variant][1],
        config=lambda w: json.dumps(GOPD["train"], sort_keys=True),
        student=lambda w, input: os.path.dirname(input.student),
        teacher=lambda w, input: os.path.dirname(input.teacher),
        scale=SCALE_NAME,
        out=output_dir,
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.gopd.train --student {params.student} --teacher {params.teacher} "
        "--ref {params.student} --lam {params.lam} --train {input.train} --valid {input.valid} "
        "--config {params.config:q} --out {params.out} --record {output.record} "
        "--variant {wildcards.variant} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


rule gopd_all:
    input:
        RUN_RECORDS.get("gopd", []),
    localrule: True
