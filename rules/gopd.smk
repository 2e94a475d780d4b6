# G-OPD / ExOPD: a student (the tiny base after a short SFT, left with headroom), a same-size
# teacher improved by GRPO, and G-OPD runs from the student over the lambda grid (reference =
# the student's start); every artifact evaluated by lm-eval. Optional settings (spec gopd.md
# sections 2.5-2.7, 8): strong-to-weak with reward correction (a larger base, SFT'd, and its
# GRPO teacher; reference = the student or the teacher's pre-RL base), multi-teacher (one GRPO
# teacher per domain, routed per sample) and the baselines SFT on teacher samples and ExPO.
from methods.gopd import grid as gopd_grid

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


GOPD_ART = lambda role: {"student": GOPD_STUDENT, "teacher": GOPD_TEACHER}.get(
    role, f"{ART}/gopd/{role}/meta.json"
)
GOPD_RUNS = gopd_grid.runs(GOPD)
GOPD_EXPO = gopd_grid.expo(GOPD)
GOPD_MT_TEACHERS = [f"mt-teacher-{d}" for d in (GOPD_MT or {}).get("domains", {})]
GOPD_BUILT = (["student"] if GOPD and GOPD.get("student_sft") else []) + (
    ["teacher"] if GOPD and not GOPD.get("teacher_model") else []
)
GOPD_S2W_BUILT = ["s2w-teacher-base", "s2w-teacher"] if GOPD_S2W else []
# lm-eval for the same-size student, teacher and lambda runs; with lm_eval_extra (default) also
# for every other student run and the strong-to-weak teacher. The teacher's pre-RL base and the
# domain teachers carry their validation numbers in their train records only.
GOPD_SAME_SIZE = [v for v in GOPD_RUNS if v.startswith("lam")] + GOPD_BUILT
GOPD_EVALUATED = (
    sorted(GOPD_RUNS) + sorted(GOPD_EXPO) + GOPD_BUILT + GOPD_S2W_BUILT[1:]
    if (GOPD or {}).get("lm_eval_extra", True)
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
        gpu=GPU,
    params:
        config=lambda w: json.dumps(GOPD_S2W["teacher_base_sft"], sort_keys=True),
        start=lambda w, input: os.path.dirname(input.start),
        out=output_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.posttrain.cli sft --start {params.start} --train {input.train} "
        "--valid {input.valid} --config {params.config:q} --out {params.out} "
        "--variant s2w-teacher-base --paper gopd --record {output.record} "
        "--scale {params.scale} --seed {params.seed} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


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
        gpu=GPU,
    params:
        config=lambda w: json.dumps(
            (
                GOPD_S2W["teacher_grpo"]
                if w.variant == "s2w-teacher"
                else {
                    **GOPD_MT["teacher_grpo"],
                    "families": GOPD_MT["domains"][
                        w.variant.removeprefix("mt-teacher-")
                    ],
                }
            ),
            sort_keys=True,
        ),
        start=lambda w, input: os.path.dirname(input.start),
        out=output_dir,
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.posttrain.cli grpo --start {params.start} --train {input.train} "
        "--valid {input.valid} --config {params.config:q} --out {params.out} "
        "--variant {wildcards.variant} --paper gopd --record {output.record} "
        "--scale {params.scale} --seed {params.seed} --threads {threads} "
        "--device {params.device} > {log} 2>&1"


rule gopd_train:
    input:
        unpack(lambda w: gopd_grid.run_inputs(GOPD_RUNS[w.variant], GOPD_ART)),
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
        mem_mb=GOPD.get("mem_mb", 4000) if GOPD else 4000,
        runtime=GOPD.get("runtime", 30) if GOPD else 30,
        gpu=GPU,
    params:
        run=lambda w, input: gopd_grid.run_args(
            GOPD_RUNS[w.variant], dict(input.items()), os.path.dirname
        ),
        seed=lambda w: GOPD_RUNS[w.variant]["seed"],
        config=lambda w: json.dumps(
            {**GOPD["train"], **GOPD_RUNS[w.variant]["extra"]}, sort_keys=True
        ),
        student=lambda w, input: os.path.dirname(input.student),
        scale=SCALE_NAME,
        out=output_dir,
        device=SCALE.get("device", "cpu"),
    shell:
        "python -m methods.gopd.train --student {params.student} {params.run} "
        "--train {input.train} --valid {input.valid} "
        "--config {params.config:q} --out {params.out} --record {output.record} "
        "--variant {wildcards.variant} --scale {params.scale} --seed {params.seed} "
        "--threads {threads} --device {params.device} > {log} 2>&1"


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
        alpha=lambda w: GOPD_EXPO[w.variant][0],
        teachers=lambda w, input: " ".join(
            f"--teacher {os.path.dirname(t)}" for t in input.teachers
        ),
        config=lambda w: json.dumps(
            {
                "max_new_tokens": GOPD["train"]["max_new_tokens"],
                **GOPD_EXPO[w.variant][2],
            },
            sort_keys=True,
        ),
        student=lambda w, input: os.path.dirname(input.student),
        scale=SCALE_NAME,
        seed=SCALE["seed"],
        out=output_dir,
    shell:
        "python -m methods.gopd.expo --student {params.student} {params.teachers} "
        "--alpha {params.alpha} --valid {input.valid} --config {params.config:q} "
        "--out {params.out} --record {output.record} --variant {wildcards.variant} "
        "--scale {params.scale} --seed {params.seed} --threads {threads} > {log} 2>&1"


rule gopd_all:
    input:
        RUN_RECORDS.get("gopd", []),
    localrule: True
