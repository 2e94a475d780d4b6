import subprocess

import pytest
import yaml

from claimbench.config import known_papers, load_scale, load_workflow_config
from claimbench.errors import ConfigError


@pytest.mark.parametrize("scale", ["tiny", "small", "paper"])
def test_shipped_scales_validate(scale):
    data = load_scale(scale)
    assert data["scale"] == scale and data["models"]


def bad_scale(tmp_path, mutate):
    data = yaml.safe_load(open("config/scales/tiny.yaml"))
    mutate(data)
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["models"]["lm-s"].update(hidden_size="big"),
            r"models\.lm-s\.hidden_size: 'big' is not of type 'integer'",
        ),
        (
            lambda d: d["models"]["lm-s"]["train"].update(lr=5),
            r"models\.lm-s\.train\.lr: 5 is greater than the maximum of 1",
        ),
        (
            lambda d: d["data"]["arith"].update(id_families=["add", "divide"]),
            r"data\.arith\.id_families\.1: 'divide' is not one of",
        ),
        (lambda d: d.update(colour="blue"), r"'colour' was unexpected"),
        (
            lambda d: d["eval"]["lm_eval"].update(batch_size=0),
            r"eval\.lm_eval\.batch_size: 0 is less than the minimum of 1",
        ),
        (
            lambda d: d["models"].update(x={"kind": "local", "path": "/nonexistent/model"}),
            r"models\.x\.path: '/nonexistent/model' is not a local model folder",
        ),
        (lambda d: d["models"].update(x={"kind": "hub", "id": "not a hub id"}), r"models\.x\.id"),
    ],
)
def test_bad_scale_values_are_named(tmp_path, mutate, message):
    path = bad_scale(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message) as err:
        load_scale("tiny", path)
    assert str(path) in str(err.value)


def test_unknown_scale_and_paper():
    with pytest.raises(ConfigError, match=r"scale: 'huge' is not one of"):
        load_workflow_config({"scale": "huge"})
    with pytest.raises(ConfigError, match=r"papers: 'nope' is not a known paper"):
        load_workflow_config({"scale": "tiny", "papers": ["nope"]})
    assert "base" in known_papers()
    assert load_workflow_config({"scale": "tiny", "papers": "all"})["papers"][0] == "base"


def _snakemake(snakemake_bin, root, *args):
    return subprocess.run(
        [snakemake_bin, "-n", "--cores", "1", "reproduce_all", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_snakemake_stops_before_any_job_on_bad_config(snakemake_bin, root, tmp_path):
    proc = _snakemake(snakemake_bin, root, "--config", "scale=huge")
    assert proc.returncode != 0
    assert "scale: 'huge' is not one of ['tiny', 'small', 'paper']" in proc.stdout + proc.stderr
    path = bad_scale(tmp_path, lambda d: d["models"]["lm-s"].update(num_layers=0))
    proc = _snakemake(snakemake_bin, root, "--config", f"scale_file={path}")
    assert proc.returncode != 0
    assert "models.lm-s.num_layers: 0 is less than the minimum of 1" in proc.stdout + proc.stderr


def test_slurm_profile_dry_run(snakemake_bin, root):
    proc = subprocess.run(
        [
            snakemake_bin,
            "-n",
            "--forceall",  # every job listed, also in a tree where this scale has run
            "--workflow-profile",
            "profiles/slurm",
            "reproduce_all",
            "--config",
            "scale=paper",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    # the partition follows each job's `gpu` (profiles/slurm/partitions.yaml; tests/test_slurm.py
    # checks the sbatch lines); a GPU job gets CPUs per GPU
    assert "rule eval_lm" in out and "cpus_per_gpu=8, gpu=1" in out
    assert "slurm_partition=" not in out


def test_paper_section_model_reference_must_exist(tmp_path):
    path = bad_scale(tmp_path, lambda d: d["papers"]["psft"].update(start_model="lm-xl"))
    with pytest.raises(
        ConfigError, match=r"papers\.psft\.start_model: 'lm-xl' is not one of the scale's models"
    ):
        load_scale("tiny", path)


def test_gopd_extra_student_must_be_a_model(tmp_path):
    path = bad_scale(
        tmp_path, lambda d: d["papers"]["gopd"].update(extra_students={"lm-xl": {"lambdas": [1.0]}})
    )
    with pytest.raises(
        ConfigError,
        match=r"papers\.gopd\.extra_students: 'lm-xl' is not one of the scale's models",
    ):
        load_scale("tiny", path)
