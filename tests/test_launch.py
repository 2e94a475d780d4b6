"""The launcher of multi-GPU training jobs (rules/common.smk ``launch``): at the paper scale every
job that asks for several GPUs starts one process per GPU through ``accelerate launch`` inside
its allocation, locally and under ``--profile profiles/slurm``; every other job (tiny, small,
one GPU) starts plain ``python``. Checked on the commands the dry run prints (``-p``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
# the multi-GPU training rules: their shell starts with the launcher, whatever GPUs they ask for
TRAINING_RULES = {
    "psft.smk": ["psft_train", "psft_rl"],
    "gopd.smk": [
        "gopd_student",
        "gopd_teacher",
        "gopd_s2w_base",
        "gopd_grpo_teacher",
        "gopd_train",
    ],
    "noisy_rewards.smk": ["noisy_rewards_start", "noisy_rewards_train"],
    "realign.smk": ["realign_ref", "realign_aligned", "realign_trra", "realign_inra"],
    "mtp_d.smk": ["mtp_d_train", "mtp_d_extend"],
}
LAUNCHER = re.compile(
    r"^accelerate launch --num_processes (\d+) --num_machines 1 "
    r"(?:--config_file \S+|--multi_gpu) --main_process_port 0"
    r"(?: --num_cpu_threads_per_process \d+)? -m methods\."
)


def dry_run(workdir: Path, *args: str) -> dict[str, tuple[dict, str]]:
    """{rule[wildcards]: (resources, shell command)} of every job of a forced dry run."""
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "-p", "--forceall", "--cores", "1024", "-s", str(ROOT / "Snakefile")]
        + ["--directory", str(workdir), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule \w+:)", proc.stdout):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if not m or not cmd:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        key = f"{m.group(1)}[{wildcards.group(1) if wildcards else ''}]"
        jobs[key] = (resources, cmd.group(1))
    return jobs


# Evaluations of a model too big for one GPU (a 70B in bf16) run ONE process that spreads the
# weights over the job's GPUs (lm-eval's parallelize / device_map auto): no launcher.
MODEL_PARALLEL = ("eval_lm[", "eval_ppl[")


def launcher_errors(jobs: dict[str, tuple[dict, str]]) -> list[str]:
    """Jobs whose command does not start the processes its GPUs call for."""
    bad = []
    for key, (resources, cmd) in jobs.items():
        gpus = int(resources.get("gpu", 0))
        if key.startswith(MODEL_PARALLEL):
            if not cmd.startswith("python -m benchmarks."):
                bad.append(f"{key}: a model-parallel evaluation runs one process: {cmd[:120]}")
            continue
        m = LAUNCHER.match(cmd)
        if gpus > 1 and (m is None or int(m.group(1)) != gpus):
            bad.append(f"{key}: {gpus} GPUs but: {cmd[:120]}")
        elif gpus <= 1 and cmd.startswith("accelerate"):
            bad.append(f"{key}: {gpus} GPU(s) but launched: {cmd[:120]}")
    return bad


def test_every_training_rule_starts_through_the_launcher():
    for file, rules in TRAINING_RULES.items():
        text = (ROOT / "rules" / file).read_text()
        parts = re.split(r"^rule (\w+):", text, flags=re.M)[1:]
        blocks = dict(zip(parts[::2], parts[1::2], strict=True))
        for rule in rules:
            body = blocks[rule]
            assert re.search(r"^\s+launch=launch\(", body, re.M), (file, rule)
            shell = body.split("shell:", 1)[1]
            assert re.match(r'\s+"\{params\.launch\} -m methods\.', shell), (file, rule)


@pytest.fixture(scope="module")
def paper_jobs(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp("paper"), "reproduce_all", "--config", "scale=paper")


def test_paper_scale_launches_each_multi_gpu_job_with_one_process_per_gpu(paper_jobs):
    multi = {
        k
        for k, (res, _) in paper_jobs.items()
        if int(res.get("gpu", 0)) > 1 and not k.startswith(MODEL_PARALLEL)
    }
    # a 70B model's evaluations take several GPUs in one process
    big = [
        k
        for k, (res, _) in paper_jobs.items()
        if k.startswith("eval_lm[paper=base, variant=llama-3-70b]")
    ]
    assert big and all(int(paper_jobs[k][0]["gpu"]) == 4 for k in big), big
    # MTP-D's training jobs take a whole 8-GPU node (papers.mtp_d.resources.train_gpus)
    assert {k.split("[")[0] for k in multi} >= {"mtp_d_train", "mtp_d_extend"}, sorted(multi)
    assert len(paper_jobs) > 100
    assert launcher_errors(paper_jobs) == []
    train = [cmd for k, (_, cmd) in paper_jobs.items() if k.startswith("mtp_d_train[")]
    assert train and all(c.startswith("accelerate launch --num_processes 8 ") for c in train)
    # the check can fail: the same jobs with one GPU fewer than their launcher starts
    shrunk = {
        k: ({**res, "gpu": int(res["gpu"]) - 1}, cmd)
        for k, (res, cmd) in paper_jobs.items()
        if k in multi
    }
    assert len(launcher_errors(shrunk)) == len(multi)


def test_paper_scale_under_the_slurm_profile_lists_the_same_launcher(paper_jobs, tmp_path):
    jobs = dry_run(
        tmp_path,
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "reproduce_all",
        "--config",
        "scale=paper",
    )
    assert launcher_errors(jobs) == []
    launched = sorted(k for k, (_, cmd) in jobs.items() if cmd.startswith("accelerate launch"))
    assert launched == sorted(k for k, (_, c) in paper_jobs.items() if c.startswith("accelerate"))
    assert launched


def test_gpu_count_comes_from_the_scale_file(tmp_path):
    scale = yaml.safe_load((ROOT / "config" / "scales" / "paper.yaml").read_text())
    scale["papers"]["mtp_d"]["resources"]["train_gpus"] = 2
    path = tmp_path / "paper-2gpu.yaml"
    path.write_text(yaml.safe_dump(scale, sort_keys=False))
    jobs = dry_run(tmp_path, "mtp_d_all", "--config", "scale=paper", f"scale_file={path}")
    train = {k: v for k, v in jobs.items() if k.startswith(("mtp_d_train[", "mtp_d_extend["))}
    assert train and launcher_errors(jobs) == []
    for res, cmd in train.values():
        assert res["gpu"] == "2" and cmd.startswith("accelerate launch --num_processes 2 "), cmd


def test_tiny_scale_starts_plain_python(tmp_path):
    jobs = dry_run(tmp_path, "reproduce_all", "--config", "scale=tiny")
    rules = {r for rs in TRAINING_RULES.values() for r in rs}
    train = [cmd for k, (_, cmd) in jobs.items() if k.split("[")[0] in rules]
    assert len(train) > 10
    assert all(cmd.startswith("python -m methods.") for cmd in train), train[:3]


def test_pretrained_trunk_protocol_launches_its_training_jobs(tmp_path):
    """methods/mtp_d/trunk_protocol.yaml at the paper scale: heads and loops on 8 GPUs through
    the launcher; ntp (the trunk itself, nothing to train) as one plain process."""
    from methods.mtp_d.trunk_scale import trunk_scale

    path = tmp_path / "paper-trunk.yaml"
    path.write_text(yaml.safe_dump(trunk_scale("paper"), sort_keys=False))
    jobs = dry_run(tmp_path, "mtp_d_all", "--config", "scale=paper", f"scale_file={path}")
    assert launcher_errors(jobs) == []
    train = {k: cmd for k, (_, cmd) in jobs.items() if k.startswith("mtp_d_")}
    assert train["mtp_d_train[variant=ntp]"].startswith("python -m methods.mtp_d.build train")
    for key in ("mtp_d_train[variant=mtp_d]", "mtp_d_extend[variant=mtp_d_loop8]"):
        assert train[key].startswith("accelerate launch --num_processes 8 "), train[key]
    assert "--trunk artifacts/paper/base/smollm2-1.7b" in train["mtp_d_train[variant=mtp_d]"]
    assert "base_hub[name=smollm2-1.7b]" in jobs or any(k.startswith("base_hub") for k in jobs)
    # the main heads of ntp, mtp and mtp_d are the frozen trunk bit for bit: only the trunk is
    # evaluated, so main_head_preserved has no data here rather than holding by construction
    evals = {k for k in jobs if k.startswith("eval_lm[") and "paper=mtp_d," in k}
    assert evals == {"eval_lm[paper=mtp_d, variant=ntp]"}, evals


def test_from_scratch_mtp_d_evaluates_every_main_head(paper_jobs):
    evals = {k for k in paper_jobs if k.startswith("eval_lm[") and "paper=mtp_d," in k}
    assert {"eval_lm[paper=mtp_d, variant=mtp]", "eval_lm[paper=mtp_d, variant=mtp_d]"} <= evals
