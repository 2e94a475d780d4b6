# G-OPD / ExOPD: a student (the tiny base after a short SFT, left with headroom), a same-size
# teacher improved by GRPO, and G-OPD runs from the student over the lambda grid (reference =
# the student's start); every artifact evaluated by lm-eval. Optional settings (paper sections
# 2.3 and 4; methods/gopd/README.md): strong-to-weak with reward correction (a larger base, SFT'd,
# and its GRPO teacher; reference = the student or the teacher's pre-RL base), multi-teacher
# (one GRPO teacher per domain, routed per sample) and the baselines SFT on teacher samples and
# ExPO. The run grid is computed here from the scale's papers.gopd (rules/gopd_helpers.smk).
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
GOPD_S2W = (GOPD or {}).get("strong_to_weak")
GOPD_MT = (GOPD or {}).get("multi_teacher")


include: "gopd_helpers.smk"


GOPD_ART = lambda role: {"student": GOPD_STUDENT, "teacher": GOPD_TEACHER}.get(
    role,
    (
        f"{ART}/base/{role[5:]}/meta.json"
        if role.startswith("base:")
        else f"{ART}/gopd/{role}/meta.json"
    ),
)
GOPD_RUNS = _gopd_runs(GOPD)
GOPD_EXPO = _gopd_expo(GOPD)
GOPD_MT_TEACHERS = [f"mt-teacher-{d}" for d in (GOPD_MT or {}).get("domains", {})]
GOPD_BUILT = (["student"] if GOPD and GOPD.get("student_sft") else []) + (
    ["teacher"] if GOPD and not GOPD.get("teacher_model") else []
)
GOPD_S2W_BUILT = ["s2w-teacher-base", "s2w-teacher"] if GOPD_S2W else []
# lm-eval for the same-size student, teacher and lambda runs; with lm_eval_extra (the schema's
# default) also for every other student run and the strong-to-weak teacher. The teacher's
# pre-RL base and the domain teachers carry their validation numbers in their train records only.
GOPD_SAME_SIZE = [v for v in GOPD_RUNS if v.startswith("lam")] + GOPD_BUILT
GOPD_EVALUATED = (
    sorted(GOPD_RUNS) + sorted(GOPD_EXPO) + GOPD_BUILT + GOPD_S2W_BUILT[1:]
    if GOPD and GOPD["lm_eval_extra"]
    else GOPD_SAME_SIZE
)

if GOPD and "gopd" in PAPERS:
    RUN_RECORDS["gopd"] = [f"{RUNS}/gopd/{v}/lm_eval.json" for v in GOPD_EVALUATED] + [
        f"{RUNS}/gopd/{v}/train.json"
        for v in sorted(GOPD_RUNS)
        + sorted(GOPD_EXPO)
        + GOPD_BUILT
        + GOPD_S2W_BUILT
        + GOPD_MT_TEACHERS
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
        gpu=train_gpus("gopd"),
    params:
        launch=launch(),
        job=job("gopd", "student"),
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.posttrain.cli sft {params.job} --settings student_sft "
        "--start {params.start} --train {input.train} --valid {input.valid} "
        "--record {output.record} > {log} 2>&1"


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
        gpu=train_gpus("gopd"),
    params:
        launch=launch(),
        job=job("gopd", "teacher"),
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.posttrain.cli grpo {params.job} --settings teacher_grpo "
        "--start {params.start} --train {input.train} --valid {input.valid} "
        "--record {output.record} > {log} 2>&1"


rule gopd_s2w_base:
    input:
        start=lambda w: f"{ART}/base/{GOPD_S2W['teacher_base_model']}/meta.json",
        train=f"{DATA}/arith/train.jsonl",
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/gopd/s2w-teacher-base/meta.json",
        record=f"{RUNS}/gopd/s2w-teacher-base/train.json",
    log:
        f"{LOGS}/gopd/s2w-teacher-base.train.log",
    benchmark:
        f"{LOGS}/gopd/s2w-teacher-base.train.benchmark.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=train_gpus("gopd"),
    params:
        launch=launch(),
        job=job("gopd", "s2w-teacher-base"),
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.posttrain.cli sft {params.job} "
        "--settings strong_to_weak.teacher_base_sft --start {params.start} "
        "--train {input.train} --valid {input.valid} --record {output.record} > {log} 2>&1"


rule gopd_grpo_teacher:
    input:
        start=lambda w: GOPD_ART(
            "s2w-teacher-base" if w.variant == "s2w-teacher" else "student"
        ),
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
        variant=one_of(GOPD_S2W_BUILT[1:] + GOPD_MT_TEACHERS),
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=train_gpus("gopd"),
    params:
        launch=launch(),
        job=job("gopd", "{variant}"),
        # a domain teacher trains on its domain's families only
        settings=lambda w: (
            "strong_to_weak.teacher_grpo"
            if w.variant == "s2w-teacher"
            else "multi_teacher.teacher_grpo --families-key multi_teacher.domains."
            + w.variant.removeprefix("mt-teacher-")
        ),
        start=lambda w, input: os.path.dirname(input.start),
    shell:
        "{params.launch} -m methods.posttrain.cli grpo {params.job} --settings {params.settings} "
        "--start {params.start} --train {input.train} --valid {input.valid} "
        "--record {output.record} > {log} 2>&1"


rule gopd_train:
    input:
        unpack(_gopd_run_inputs),
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
        variant=one_of(sorted(GOPD_RUNS)),
    threads: JOB_THREADS
    resources:
        mem_mb=GOPD["mem_mb"] if GOPD else 4000,
        runtime=GOPD["runtime"] if GOPD else 30,
        gpu=train_gpus("gopd"),
    params:
        launch=launch(),
        job=_gopd_job,
        run=_gopd_run_args,
        student=lambda w, input: os.path.dirname(input.student),
    shell:
        "{params.launch} -m methods.gopd.train {params.job} --student {params.student} {params.run} "
        "--train {input.train} --valid {input.valid} --record {output.record} > {log} 2>&1"


rule gopd_expo:
    input:
        student=GOPD_STUDENT,
        teachers=lambda w: [GOPD_ART(t) for t in GOPD_EXPO[w.variant][1]],
        valid=f"{DATA}/arith/valid.jsonl",
    output:
        meta=f"{ART}/gopd/{{variant}}/meta.json",
        record=f"{RUNS}/gopd/{{variant}}/train.json",
    log:
        f"{LOGS}/gopd/{{variant}}.train.log",
    benchmark:
        f"{LOGS}/gopd/{{variant}}.train.benchmark.tsv"
    wildcard_constraints:
        variant=one_of(sorted(GOPD_EXPO)),
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=10,
        gpu=GPU,
    params:
        job=job("gopd", "{variant}"),
        alpha=lambda w: GOPD_EXPO[w.variant][0],
        teachers=lambda w, input: " ".join(
            f"--teacher {os.path.dirname(t)}" for t in input.teachers
        ),
        domains=lambda w: "--eval-domains" if GOPD_EXPO[w.variant][2] else "",
        student=lambda w, input: os.path.dirname(input.student),
    shell:
        "python -m methods.gopd.expo {params.job} --student {params.student} "
        "{params.teachers} --alpha {params.alpha} {params.domains} --valid {input.valid} "
        "--record {output.record} > {log} 2>&1"


rule gopd_all:
    input:
        RUN_RECORDS.get("gopd", []),
    localrule: True
