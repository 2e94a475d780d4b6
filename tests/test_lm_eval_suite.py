import json
import math
from pathlib import Path

import pytest

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
        "max_length": None,
        "backend": "hf",
        "use_cache": False,
        "steer": None,
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


def _scale_with(tmp_path, **lm_eval):
    import yaml

    from tests.helpers import reduced_scale

    path = reduced_scale(tmp_path / "tiny-lm.yaml", ROOT)
    data = yaml.safe_load(path.read_text())
    data["eval"]["lm_eval"].update(lm_eval)
    path.write_text(yaml.safe_dump(data))
    return path


def _job(tmp_path, scale_file, *extra, paper="base"):
    from benchmarks import lm_eval_suite
    from claimbench.job import job_from_args

    argv = ["--scale", "tiny", "--scale-file", str(scale_file), "--paper", paper]
    argv += ["--variant", "lm-s", "--out", str(tmp_path / "r" / "lm_eval.json")]
    argv += ["--artifact", "a", "--data-dir", "d", *extra]
    return job_from_args(lm_eval_suite.parser().parse_args(argv))


def test_context_is_the_models_capped_with_room_for_long_answers():
    from benchmarks.lm_eval_suite import context_length

    assert context_length(131072, None, 256) == 131072  # no cap: what lm-eval reads itself
    assert context_length(131072, 4096, 256) == 4096  # Llama-3.1 at the paper scale
    assert context_length(131072, 4096, 16384) == 16384 + 1024  # a 16k-token answer
    assert context_length(8192, 4096, 16384) == 8192  # never beyond the model's own
    assert context_length(256, 4096, 8) == 256


def test_vllm_backend_per_scale_and_paper(tmp_path):
    import importlib.util

    from benchmarks.lm_eval_suite import build_lm, settings, vllm_model_args
    from claimbench.errors import ClaimbenchError

    scale = _scale_with(tmp_path, vllm_papers=["psft"], max_length=4096, use_cache=True)
    assert settings(_job(tmp_path, scale))["backend"] == "hf"
    got = settings(_job(tmp_path, scale, paper="psft"))
    assert got["backend"] == "vllm" and got["max_length"] == 4096 and got["use_cache"] is True
    assert settings(_job(tmp_path, _scale_with(tmp_path, backend="vllm")))["backend"] == "vllm"
    assert settings(_job(tmp_path, scale, "--backend", "hf", paper="psft"))["backend"] == "hf"
    vllm = {"gpu_memory_utilization": 0.85, "tensor_parallel_size": 1}
    args = vllm_model_args("/m/llama", "bfloat16", 4096, 0, vllm, 256)
    assert args == (
        "pretrained=/m/llama,dtype=bfloat16,max_model_len=4096,gpu_memory_utilization=0.85,"
        "tensor_parallel_size=1,max_gen_toks=256,seed=0"
    )
    with pytest.raises(ClaimbenchError, match="','"):
        vllm_model_args("/m/a,b", "bfloat16", 4096, 0, vllm, 256)
    if importlib.util.find_spec("vllm") is None:
        job = _job(tmp_path, scale, paper="psft")
        config = {**settings(job), "context": 4096}
        with pytest.raises(ClaimbenchError, match="package 'vllm' is not installed"):
            build_lm(job, config, "/m/llama")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from claimbench.micro import micro_lm

    return micro_lm(tmp_path_factory.mktemp("micro") / "llama", arch="llama")


def test_steered_model_coefficient_zero_is_the_base_model(micro, tmp_path):
    """lm-eval's steered model type from our steer file: coefficient 0 leaves a
    log-likelihood unchanged, a nonzero one changes it; the context is the one we set."""
    import torch
    from lm_eval.api.instance import Instance

    from benchmarks.lm_eval_suite import build_lm, check_steer_file, settings
    from claimbench.errors import ClaimbenchError

    job = _job(tmp_path, _scale_with(tmp_path))
    vec = torch.randn(64, generator=torch.Generator().manual_seed(0))
    req = [Instance("loglikelihood", {}, ("Problem 3: what is 4 plus", " 7?"), 0)]

    def loglik(coef):
        config = {**settings(job), "context": 2048}
        if coef is not None:
            config["steer"] = str(tmp_path / f"steer{coef}.pt")
            spec = {"steering_vector": vec, "steering_coefficient": coef, "action": "add"}
            torch.save({"layers.0": {**spec, "bias": None, "head_index": None}}, config["steer"])
        lm = build_lm(job, config, str(micro))
        assert lm.max_length == 2048
        return lm.loglikelihood(req)[0][0]

    base = loglik(None)
    assert loglik(0.0) == base
    assert abs(loglik(4.0) - base) > 1e-3
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ClaimbenchError, match="bad.pt"):
        check_steer_file(str(tmp_path / "bad.pt"))


def test_results_json_and_request_cache(micro, tmp_path):
    """lm-eval's own results beside the record (gzipped JSON the store does not read as a
    record), and a request cache that a second run reads instead of the model."""
    import gzip

    from benchmarks import lm_eval_suite
    from claimbench.micro import CORPUS
    from claimbench.store import find_records

    data = tmp_path / "data"
    (data / "text").mkdir(parents=True)
    rows = [json.dumps({"text": " ".join(CORPUS[i : i + 3])}) for i in range(0, 24, 3)]
    (data / "text" / "test.jsonl").write_text("\n".join(rows) + "\n")
    scale = _scale_with(tmp_path, use_cache=True, max_length=2048)
    runs = tmp_path / "runs"
    argv = ["--scale", "tiny", "--scale-file", str(scale), "--paper", "base", "--variant", "m"]
    argv += ["--artifact", str(micro), "--data-dir", str(data), "--tasks", "text_ppl"]
    out = runs / "tiny" / "base" / "m" / "lm_eval.json"
    lm_eval_suite.main([*argv, "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["config"]["context"] == 2048 and rec["config"]["use_cache"] is True
    res = json.loads(gzip.decompress(out.with_suffix(".results.json.gz").read_bytes()))
    first = {(m["task"], m["metric"]): m["value"] for m in rec["metrics"]}
    assert math.isclose(
        res["results"]["text_ppl"]["word_perplexity,none"], first[("text_ppl", "word_perplexity")]
    )
    assert "samples" not in res
    assert find_records(runs) == [out]
    caches = list(out.parent.glob("lm_eval.cache-*_rank0.db"))
    assert len(caches) == 1
    # A second run answers from the cache: same numbers even with the model's weights gone.
    import shutil

    gone = tmp_path / "gone"
    shutil.copytree(micro, gone)
    from safetensors.torch import load_file, save_file

    w = load_file(gone / "model.safetensors")
    save_file(
        {k: v * 0 for k, v in w.items()}, gone / "model.safetensors", metadata={"format": "pt"}
    )
    (gone / "meta.json").write_text((micro / "meta.json").read_text())
    argv[argv.index(str(micro))] = str(gone)
    lm_eval_suite.main([*argv, "--out", str(out)])
    again = {(m["task"], m["metric"]): m["value"] for m in json.loads(out.read_text())["metrics"]}
    assert again == first


def _gsm8k_like_samples():
    """lm-eval's logged samples of a generate task with two filters (gsm8k's): one per
    document and filter, all of the first filter before the second."""
    out = []
    for filt, answers in (("strict-match", ["3", "[invalid]"]), ("flexible-extract", ["3", "5"])):
        for doc_id, (ans, target) in enumerate(zip(answers, ["3", "5"], strict=True)):
            out.append(
                {
                    "doc_id": doc_id,
                    "doc": {"q": doc_id},
                    "target": target,
                    "arguments": {"gen_args_0": {"arg_0": f"Q{doc_id}", "arg_1": {}}},
                    "resps": [[["so the answer is 3", "it is 5"][doc_id]]],
                    "filtered_resps": [ans],
                    "filter": filt,
                    "metrics": ["exact_match"],
                    "doc_hash": f"h{doc_id}",
                    "exact_match": float(ans == target),
                }
            )
    return out


def test_two_filters_give_two_metric_names_and_one_row_per_document(tmp_path):
    """gsm8k's strict-match and flexible-extract become exact_match_<filter> (a task with one
    filter keeps the plain name); the samples file has one row per document scoring both, so
    per-document pairing never mixes the filters, and the record contract accepts it."""
    from benchmarks.lm_eval_suite import _metrics_for_task, _sample_rows
    from claimbench.records import iter_samples

    res = {
        "alias": "gsm8k",
        "exact_match,strict-match": 0.5,
        "exact_match_stderr,strict-match": 0.5,
        "exact_match,flexible-extract": 1.0,
        "exact_match_stderr,flexible-extract": 0.0,
    }
    samples = _gsm8k_like_samples()
    metrics = _metrics_for_task("gsm8k", res, samples, {"exact_match": True}, 2)
    names = {m["metric"]: m["value"] for m in metrics}
    assert names == {"exact_match_strict-match": 0.5, "exact_match_flexible-extract": 1.0}
    one = {"exact_match,first_int": 0.25, "exact_match_stderr,first_int": 0.1}
    assert [m["metric"] for m in _metrics_for_task("t", one, [], {}, 4)] == ["exact_match"]

    rows = _sample_rows("gsm8k", samples, "generate_until")
    assert [r["doc_id"] for r in rows] == [0, 1]
    assert rows[1]["metrics"] == {
        "exact_match_strict-match": 0.0,
        "exact_match_flexible-extract": 1.0,
    }
    assert rows[1]["filter"] == "strict-match" and rows[1]["response"] == "[invalid]"
    assert rows[1]["filtered_responses"] == {"strict-match": "[invalid]", "flexible-extract": "5"}
    assert rows[1]["raw_response"] == "it is 5"
    # Per metric, the rows' mean is the stored value: each filter pairs on its own.
    for name, value in names.items():
        assert sum(r["metrics"][name] for r in rows) / len(rows) == value
    # The record contract: exactly n rows per metric, no document repeated.
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {"samples": "s.jsonl", "metrics": metrics}
    assert len(list(iter_samples(tmp_path / "r.json", record))) == 2


def _first_int(text: str) -> str:
    """lm-eval's regex (-?[0-9]+) + take_first filter of the local arithmetic tasks."""
    import re

    found = re.findall(r"(-?[0-9]+)", text)
    return found[0] if found else "[invalid]"


def test_a_run_is_rescored_from_its_samples_file_alone(micro, tmp_path):
    """A micro run of a generate task, a multiple-choice task and a perplexity task: acc,
    acc_norm (lm-eval's argmax of log-likelihood / characters), exact_match (the filtered
    raw generation against the target) and word perplexity computed from the samples file
    alone equal the record's metrics."""
    from benchmarks import lm_eval_suite
    from claimbench.micro import CORPUS

    data = tmp_path / "data"
    (data / "arith").mkdir(parents=True)
    (data / "text").mkdir()
    gen = [{"prompt": f"Problem {i}: what is {i} plus 1?", "answer": str(i + 1)} for i in range(5)]
    gen.append({"prompt": "In step 3, the flow moves", "answer": "[invalid]"})
    mc = [
        {"question": f"what is {i} plus 2?", "choices": [str(i + 2), "north", "7", "step"]}
        | {"label": i % 4}
        for i in range(8)
    ]
    for name, rows in (("arith/test_id.jsonl", gen), ("arith/mc_test.jsonl", mc)):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = [json.dumps({"text": " ".join(CORPUS[i : i + 3])}) for i in range(0, 12, 3)]
    (data / "text" / "test.jsonl").write_text("\n".join(text) + "\n")
    runs = tmp_path / "runs"
    out = runs / "tiny" / "base" / "m" / "lm_eval.json"
    argv = ["--scale", "tiny", "--scale-file", str(_scale_with(tmp_path)), "--paper", "base"]
    argv += ["--variant", "m", "--artifact", str(micro), "--data-dir", str(data)]
    argv += ["--tasks", "arith_id,arith_mc,text_ppl", "--limit", "8", "--out", str(out)]
    lm_eval_suite.main(argv)
    stored = {(m["task"], m["metric"]): m for m in json.loads(out.read_text())["metrics"]}
    rows = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    by_task: dict = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)

    def mean(xs):
        return sum(xs) / len(xs)

    em = []
    for r in by_task["arith_id"]:
        assert r["filter"] == "first_int" and _first_int(r["raw_response"]) == r["response"]
        em.append(float(r["response"] == r["target"]))
    assert mean(em) == stored["arith_id", "exact_match"]["value"]
    assert stored["arith_id", "exact_match"]["n"] == len(em) == 6
    acc, acc_norm = [], []
    for r in by_task["arith_mc"]:
        lls, choices = r["loglikelihoods"], r["choices"]
        assert len(lls) == len(r["is_greedy"]) == len(choices) == 4
        norm = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
        acc.append(float(max(range(4), key=lls.__getitem__) == r["gold"]))
        acc_norm.append(float(max(range(4), key=norm.__getitem__) == r["gold"]))
        assert r["response"] == choices[max(range(4), key=lls.__getitem__)]
    assert mean(acc) == stored["arith_mc", "acc"]["value"]
    assert mean(acc_norm) == stored["arith_mc", "acc_norm"]["value"]
    assert 0 < mean(acc) < 1 or 0 < mean(acc_norm) < 1  # not a constant score
    ll = [r["loglikelihood"] for r in by_task["text_ppl"]]
    words = [r["metrics"]["word_perplexity"][1] for r in by_task["text_ppl"]]
    assert math.isclose(
        math.exp(-sum(ll) / sum(words)),
        stored["text_ppl", "word_perplexity"]["value"],
        rel_tol=1e-12,
    )
