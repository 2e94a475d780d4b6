import math
from pathlib import Path

from claimbench.stats import paired_diff, ratio_stderr, rolling_metric

ROOT = Path(__file__).resolve().parents[1]


def test_ratio_estimator_and_stderr():
    # Equal weights: ratio estimator = mean, se = sample sd / sqrt(n) / w.
    r, se = ratio_stderr([(-2.0, 1.0), (-4.0, 1.0), (-6.0, 1.0)])
    assert r == 4.0
    assert math.isclose(se, 2.0 / math.sqrt(3))
    # Identical per-unit rates give zero spread.
    r, se = ratio_stderr([(-3.0, 1.0), (-6.0, 2.0), (-9.0, 3.0)])
    assert r == 3.0 and se == 0.0
    assert ratio_stderr([(-1.0, 1.0)]) is None


def test_rolling_metric_units():
    v, se = rolling_metric("bits_per_byte", math.log(2), 0.1)
    assert math.isclose(v, 1.0) and math.isclose(se, 0.1 / math.log(2))
    v, se = rolling_metric("word_perplexity", math.log(10), 0.1)
    assert math.isclose(v, 10.0) and math.isclose(se, 1.0)


def test_paired_diff_cancels_shared_document_difficulty():
    # Document difficulty varies a lot, but b is always exactly 0.1 worse: paired se is 0.
    a = {i: (float(i % 2), None) for i in range(10)}
    b = {i: (float(i % 2) - 0.1, None) for i in range(10)}
    diff, se, n = paired_diff(a, b)
    assert math.isclose(diff, 0.1) and se < 1e-12 and n == 10
    # rolling: log-likelihoods with equal weights
    a = {i: (-2.0 * (i + 1), 1.0 * (i + 1)) for i in range(5)}
    b = {i: (-3.0 * (i + 1), 1.0 * (i + 1)) for i in range(5)}
    diff, se, n = paired_diff(a, b)
    assert math.isclose(diff, -1.0) and se < 1e-12
    assert paired_diff({1: (1.0, None)}, {1: (0.0, None)}) is None


def _suite_job(tmp_path, lm_eval_dtype=None, *extra):
    import yaml

    from benchmarks import lm_eval_suite
    from claimbench.job import job_from_args
    from tests.helpers import reduced_scale

    scale_file = reduced_scale(tmp_path / "tiny-ci.yaml", ROOT)
    if lm_eval_dtype:
        data = yaml.safe_load(scale_file.read_text())
        data["eval"]["lm_eval"]["dtype"] = lm_eval_dtype
        scale_file.write_text(yaml.safe_dump(data))
    argv = ["--scale", "tiny", "--scale-file", str(scale_file), "--paper", "base"]
    argv += ["--variant", "lm-s", "--out", str(tmp_path / "r.json"), "--artifact", "a"]
    argv += ["--data-dir", "d", *extra]
    return job_from_args(lm_eval_suite.parser().parse_args(argv))


def test_settings_come_from_the_scale_unless_given(tmp_path):
    from benchmarks.lm_eval_suite import settings

    got = settings(_suite_job(tmp_path))
    # The reduced tiny scale: its eval.lm_eval values, schema defaults, the job's dtype/device.
    assert got == {
        "tasks": ["arith_id", "arith_ood", "arith_mc", "text_ppl"],
        "batch_size": 32,
        "limit": 16,
        "max_gen_toks": 8,
        "num_fewshot": None,
        "chat_template": False,
        "dtype": "float32",
        "device": "cpu",
        "include_defaults": False,
    }
    opts = ["--tasks", "arith_mc", "--batch-size", "4", "--limit", "3", "--max-gen-toks", "5"]
    opts += ["--num-fewshot", "0", "--chat-template", "--include-defaults"]
    got = settings(_suite_job(tmp_path, None, *opts))
    assert got["tasks"] == ["arith_mc"] and got["batch_size"] == 4 and got["limit"] == 3
    assert got["max_gen_toks"] == 5 and got["num_fewshot"] == 0
    assert got["chat_template"] is True and got["include_defaults"] is True


def test_eval_dtype_is_the_jobs_unless_the_scale_overrides_it(tmp_path):
    from benchmarks.lm_eval_suite import settings

    assert settings(_suite_job(tmp_path, None, "--dtype", "float16"))["dtype"] == "float16"
    # eval.lm_eval.dtype (the paper scale sets bfloat16) overrides the job's dtype ...
    assert settings(_suite_job(tmp_path, "bfloat16", "--dtype", "float16"))["dtype"] == "bfloat16"
    # ... and --model-dtype overrides both.
    job = _suite_job(tmp_path, "bfloat16", "--model-dtype", "auto")
    assert settings(job)["dtype"] == "auto"


def test_suite_reads_no_private_file_of_the_artifact():
    """Training curves reach the report through the method's own record (``series``)."""
    src = (ROOT / "benchmarks" / "lm_eval_suite.py").read_text()
    assert "train_log" not in src
