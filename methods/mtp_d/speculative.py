"""Acceptance and real decoding speed of self-speculative decoding (the paper's Table 1
acceptance rates and Section 4.2 speedups; definitions in README.md).

``python -m methods.mtp_d.speculative``: loads every MTP-D artifact in one process (in the job's
dtype, on its device) and, for
every decoding configuration, (1) decodes the prompts once at batch 1 untimed, checking the
output against plain greedy decoding of the same main model and counting per-head acceptance;
(2) times every configuration at each batch size, interleaved (the order rotates each repeat),
``repeats`` times. Speedups are per-repeat ratios against plain greedy decoding (of the
next-token model) and against 1-head MTP (the plain MTP model drafting with its first head
only), reported as the median with the standard error of the repeats. One run record per
configuration (``--variants`` and ``--reuse``, named by ``rules/mtp_d.smk``), ``<out>/<config>/speculative.json``
with ``--out results/runs/<scale>/mtp_d`` (``suite: speculative``). Only the timings are
wall-clock; acceptance, losslessness and the samples are deterministic.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_jsonl, stable_hash
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.mtp_d.decode import (
    SpecStats,
    greedy_decode,
    left_pad,
    speculative_decode,
    teacher_forced_acceptance,
)

GREEDY = "ntp"  # plain next-token model: the plain-decoding reference
# teacher-forced acceptance tasks (README.md, Eq. 6): head k's top-1 against the reference token
# k+1 ahead, and against the main head's top-1 at the same offset, both on fixed held-out text
TF_TASKS = ("tf_text", "tf_text_main")
ONE_HEAD = "mtp_1head"  # 1-head MTP reference: plain MTP drafting with module 1 only


def load_prompts(data_dir: Path, tok, n: int, prompt_tokens: int) -> list[dict]:
    """Half arithmetic questions (test_id), half text openings (test), deterministic."""
    rows = []
    with open(data_dir / "arith" / "test_id.jsonl", encoding="utf-8") as f:
        arith = [json.loads(line) for line in f if line.strip()]
    with open(data_dir / "text" / "test.jsonl", encoding="utf-8") as f:
        text = [json.loads(line) for line in f if line.strip()]
    n_arith = n - n // 2
    for p in arith[:n_arith]:
        ids = tok(p["prompt"], add_special_tokens=False)["input_ids"]
        rows.append({"task": "arith", "doc_id": p["id"], "ids": ids})
    for d in text[: n - n_arith]:
        ids = tok(d["text"], add_special_tokens=False)["input_ids"][:prompt_tokens]
        rows.append({"task": "text", "doc_id": d["id"], "ids": ids})
    if len(rows) < n:
        raise ClaimbenchError(f"{data_dir}: only {len(rows)} prompts for n_prompts = {n}")
    return rows


def load_reference_windows(data_dir: Path, tok, n: int, length: int) -> list[list[int]]:
    """Fixed reference text for the teacher-forced mode: the first ``length`` tokens of the
    first ``n`` held-out text documents (``text/test.jsonl``) that are at least that long."""
    out = []
    with open(data_dir / "text" / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip() and len(out) < n:
                ids = tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
                if len(ids) >= length:
                    out.append(ids[:length])
    if not out:
        raise ClaimbenchError(f"{data_dir}/text/test.jsonl: no document has {length} tokens")
    return out


def _acceptance_metrics(task: str, st: SpecStats) -> list[dict]:
    """ar_k, car_k (binomial standard errors over steps) and tau for one acceptance count."""
    metrics = []
    for k, (ar, car) in enumerate(zip(st.ar(), st.car(), strict=True), start=1):
        n_att = st.attempted[k - 1]
        metrics.append(
            metric(
                task,
                f"ar_{k}",
                ar,
                stderr=math.sqrt(ar * (1 - ar) / n_att) if n_att else None,
                n=n_att,
                higher_is_better=True,
            )
        )
        metrics.append(
            metric(
                task,
                f"car_{k}",
                car,
                stderr=math.sqrt(car * (1 - car) / st.steps),
                n=st.steps,
                higher_is_better=True,
            )
        )
    lens = [1 + a for a in st.accepted_len]
    metrics.append(
        metric(
            task,
            "tau",
            st.tau(),
            stderr=statistics.stdev(lens) / math.sqrt(len(lens)) if len(lens) > 1 else None,
            n=len(lens),
            higher_is_better=True,
        )
    )
    return metrics


def load_configs(
    root: Path, variants: list[str], reuse: list[tuple[str, int]], job: Job
) -> tuple[dict, dict]:
    """(mains, configurations): main models by variant, and config name -> (variant, heads or
    None, depth). Trunks load in the job's dtype on its device; the heads follow their trunk."""
    from transformers import LlamaForCausalLM

    from methods.mtp_d.heads import cyclic_schedule, load_heads

    mains, heads, configs = {}, {}, {}
    for v in variants:
        folder = root / v
        main = LlamaForCausalLM.from_pretrained(folder, **job.load_kwargs())
        mains[v] = main.to(job.device).eval()
        if (folder / "mtp_heads").is_dir():
            heads[v] = load_heads(folder, mains[v]).eval()
    if GREEDY not in mains:
        raise ClaimbenchError(f"variants {variants} must include the next-token model {GREEDY!r}")
    if "mtp" not in heads:
        raise ClaimbenchError(f"variants {variants} must include the plain MTP model 'mtp'")
    configs[GREEDY] = (GREEDY, None, 0)
    configs[ONE_HEAD] = ("mtp", heads["mtp"], 1)
    for v, h in heads.items():
        configs[v] = (v, h, h.depth)
    for src, depth in reuse:  # training-free cyclic reuse of the source's trained modules
        if src not in heads:
            raise ClaimbenchError(
                f"training-free reuse of {src!r}: that variant has no trained MTP heads"
            )
        h = copy.copy(heads[src])
        h.set_schedule(cyclic_schedule(heads[src].num_modules, int(depth)))
        configs[f"{src}_reuse{depth}"] = (src, h, int(depth))
    return mains, configs


def _decode(main, heads, depth, batch, new_tokens, pad_id, stats=None):
    ids, valid = left_pad([p["ids"] for p in batch], pad_id)
    ids, valid = ids.to(main.device), valid.to(main.device)
    if heads is None:
        return greedy_decode(main, ids, valid, new_tokens)
    return speculative_decode(main, heads, ids, valid, new_tokens, depth=depth, stats=stats)


def _run_all(main, heads, depth, prompts, bsz, new_tokens, pad_id, stats=None):
    outs = []
    for i in range(0, len(prompts), bsz):
        outs.append(_decode(main, heads, depth, prompts[i : i + bsz], new_tokens, pad_id, stats))
    return torch.cat(outs)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_se(xs: list[float]) -> tuple[float, float | None]:
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return statistics.median(xs), se


def measure(job: Job) -> None:
    from transformers import AutoTokenizer

    cfg = job.config["speculative"]
    root, out_root = Path(job.args.artifacts), job.out
    tok = AutoTokenizer.from_pretrained(root / GREEDY)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    variants = [v for v in job.args.variants.split(",") if v]
    reuse = []
    for item in filter(None, job.args.reuse.split(",")):
        src, _, depth = item.partition(":")
        if not depth.isdigit():
            raise ClaimbenchError(f"--reuse {item!r}: expected <variant>:<draft depth>")
        reuse.append((src, int(depth)))
    mains, configs = load_configs(root, variants, reuse, job)
    prompts = load_prompts(Path(job.args.data_dir), tok, cfg["n_prompts"], cfg["prompt_tokens"])
    new_tokens = cfg["new_tokens"]

    # (1) untimed pass at batch 1: losslessness and per-head acceptance
    greedy_out = {v: _run_all(m, None, 0, prompts, 1, new_tokens, pad_id) for v, m in mains.items()}
    stats, outputs, per_prompt = {}, {}, {}
    for name, (v, h, depth) in tqdm(
        configs.items(), desc="acceptance (untimed)", mininterval=2.0, dynamic_ncols=True
    ):
        if h is None:
            outputs[name] = greedy_out[v]
            continue
        stats[name] = SpecStats(depth)
        rows = []
        out = []
        for p in prompts:
            s = SpecStats(depth)
            out.append(_decode(mains[v], h, depth, [p], new_tokens, pad_id, s))
            for k in range(depth):
                stats[name].attempted[k] += s.attempted[k]
                stats[name].accepted[k] += s.accepted[k]
            stats[name].steps += s.steps
            stats[name].accepted_len += s.accepted_len
            rows.append(s)
        outputs[name] = torch.cat(out)
        per_prompt[name] = rows

    # (1b) teacher-forced acceptance on fixed held-out text (untimed, deterministic)
    windows = load_reference_windows(
        Path(job.args.data_dir), tok, cfg["n_prompts"], cfg["prompt_tokens"] + new_tokens
    )
    tf_stats = {
        name: teacher_forced_acceptance(mains[v], h, windows, depth)
        for name, (v, h, depth) in configs.items()
        if h is not None
    }

    # (2) timed, interleaved, repeated
    names = list(configs)
    timings = {(n, b): [] for n in names for b in cfg["batch_sizes"]}
    bar = tqdm(
        total=cfg["repeats"] * len(cfg["batch_sizes"]) * len(names),
        desc="timed decoding",
        mininterval=2.0,
        dynamic_ncols=True,
    )
    for r in range(cfg["repeats"]):
        order = names[r % len(names) :] + names[: r % len(names)]
        for b in cfg["batch_sizes"]:
            for name in order:
                v, h, depth = configs[name]
                _sync(job.device)
                t0 = time.perf_counter()
                _run_all(mains[v], h, depth, prompts, b, new_tokens, pad_id)
                _sync(job.device)
                timings[(name, b)].append(time.perf_counter() - t0)
                bar.update()  # outside the timed span
    bar.close()
    prov = job.provenance()
    n_tok = len(prompts) * new_tokens
    for name, (v, h, depth) in configs.items():
        metrics, samples = [], []
        lossless = [
            float(torch.equal(outputs[name][i], greedy_out[v][i])) for i in range(len(prompts))
        ]
        for b in cfg["batch_sizes"]:
            task = f"spec_b{b}"
            times = timings[(name, b)]
            tps = [n_tok / s for s in times]
            vs_greedy = [g / s for g, s in zip(timings[(GREEDY, b)], times, strict=True)]
            vs_one = [g / s for g, s in zip(timings[(ONE_HEAD, b)], times, strict=True)]
            for mname, xs in (
                ("tokens_per_s", tps),
                ("speedup_vs_greedy", vs_greedy),
                ("speedup_vs_mtp1", vs_one),
            ):
                med, se = _median_se(xs)
                metrics.append(
                    metric(task, mname, med, stderr=se, n=len(xs), higher_is_better=True)
                )
            metrics.append(
                metric(task, "tokens_per_s_min", min(tps), n=len(tps), higher_is_better=True)
            )
            metrics.append(
                metric(task, "tokens_per_s_max", max(tps), n=len(tps), higher_is_better=True)
            )
        task = f"spec_b{cfg['batch_sizes'][0]}"
        metrics.append(
            metric(task, "lossless", sum(lossless) / len(lossless), n=len(lossless))
            | {"higher_is_better": True}
        )
        curves = []
        if name in stats:
            st = stats[name]
            metrics.extend(_acceptance_metrics(task, st))
            for tf_task, tf_st in zip(TF_TASKS, tf_stats[name], strict=True):
                metrics.extend(_acceptance_metrics(tf_task, tf_st))
            one = stats[ONE_HEAD].tau()
            metrics.append(metric(task, "tau_ratio_vs_mtp1", st.tau() / one, higher_is_better=True))
            for family in sorted({p["task"] for p in prompts}):  # arith vs text prompts
                fam = [
                    r for p, r in zip(prompts, per_prompt[name], strict=True) if p["task"] == family
                ]
                steps = sum(r.steps for r in fam)
                for k in range(depth):
                    car = sum(r.accepted[k] for r in fam) / steps
                    metrics.append(
                        metric(
                            f"{task}_{family}",
                            f"car_{k + 1}",
                            car,
                            stderr=math.sqrt(car * (1 - car) / steps),
                            n=steps,
                            higher_is_better=True,
                        )
                    )
            heads_x = list(range(1, depth + 1))
            curves = [
                series("cumulative acceptance CAR per head", heads_x, st.car(), "head k", "CAR_k"),
                series("conditional acceptance AR per head", heads_x, st.ar(), "head k", "AR_k"),
            ]
        for i, p in enumerate(prompts):
            row = {
                "task": task,
                "doc_id": i,  # integer position of the prompt (the store's doc_id type)
                "source_id": p["doc_id"],
                "doc_hash": stable_hash(p["ids"]),
                "prompt": tok.decode(p["ids"]),
                "target": tok.decode(greedy_out[v][i].tolist()),
                "response": tok.decode(outputs[name][i].tolist()),
                "metrics": {"lossless": lossless[i]},
            }
            if name in per_prompt:
                s = per_prompt[name][i]
                row["metrics"] |= {f"prompt_car_{k + 1}": c for k, c in enumerate(s.car())}
                row["metrics"]["prompt_tau"] = s.tau()
            samples.append(row)
        config = {
            "decoding": "greedy" if h is None else "self_speculative_greedy",
            "source_variant": v,
            "depth": depth,
            "schedule": None if h is None else h.schedule,
            "acceptance_mode": "spec_decode",
            "acceptance_modes": {
                f"spec_b{cfg['batch_sizes'][0]}": "spec_decode (the model's own continuation)",
                TF_TASKS[0]: "teacher_forced (head k's top-1 = reference token k+1 ahead)",
                TF_TASKS[1]: "teacher_forced_main (head k's top-1 = main head's top-1 there)",
            },
            "teacher_forced_windows": len(windows) if h is not None else 0,
            "dtype": job.dtype,
            "device": job.device,
            "threads": job.threads,
            **cfg,
        }
        out = out_root / name / "speculative.json"
        atomic_write_jsonl(out.parent / "speculative.samples.jsonl", samples)
        meta = json.loads((root / v / "meta.json").read_text())
        record = job.record(
            method="mtp_d" if v != GREEDY else "ntp",
            variant=name,
            base_model=meta.get("base_model", ""),
            suite="speculative",
            config=config,
            metrics=metrics,
            provenance=prov,
            task_hashes={
                t: stable_hash([t] + windows)
                if t in TF_TASKS
                else stable_hash([t, new_tokens] + [p["ids"] for p in prompts if p["task"] in t])
                if t.endswith(("_arith", "_text"))
                else stable_hash([new_tokens] + [p["ids"] for p in prompts])
                for t in {m["task"] for m in metrics}
            },
            samples="speculative.samples.jsonl",
            series=curves,
        )
        job.write_record(record, out)
        print(
            f"{name}: " + ", ".join(f"{m['task']}.{m['metric']}={m['value']:.3f}" for m in metrics)
        )


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(
        __doc__, papers=["mtp_d"], out="folder of the records: <out>/<config>/speculative.json"
    )
    ap.add_argument("--artifacts", required=True, help="folder of the MTP-D artifacts")
    ap.add_argument("--variants", required=True, help="comma-separated artifact variants")
    ap.add_argument("--reuse", default="", help="comma-separated <variant>:<depth> cyclic reuse")
    ap.add_argument("--data-dir", required=True, help="the scale's data folder (arith/, text/)")
    run_job(ap, measure, argv)


if __name__ == "__main__":
    main()
