"""Measurements of the Locate -> Steer -> Improve pipeline on the tiny worlds; run records out.

Subcommands (one process per artifact and suite):

* ``locate``   induction model: activation patching (denoise + noise; resid/attn/mlp per layer x
  position, heads per layer x head [x position]), attribution patching and its rank agreement,
  logit lens and tuned lens.
* ``probe``    behaviour model: per-layer mode probes with random-model and control-task baselines.
* ``steer``    behaviour model: CAA vectors per layer, alpha sweep, random-vector controls,
  directional ablation of the mode direction.
* ``improve``  behaviour model: refusal-direction selection, ablation (run time and weight
  orthogonalisation), induction by addition, side effects, the pre-registered verdict.
* ``sensitivity`` per-module sensitivity on neutral text (the efficiency use case's input).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from claimbench.io import atomic_write_json, atomic_write_jsonl, sha256_file, stable_hash
from claimbench.job import Job, job_parser, run_job
from claimbench.models import loadable_source
from claimbench.records import metric, series
from claimbench.stats import spearman
from methods.interp.hooks import HookedLM
from methods.mi_steer import locate as L
from methods.mi_steer import steer as S
from methods.mi_steer.vocab import CharVocab

PARTS = (("attn", "self_attn"), ("mlp", "mlp"))  # the modules run_sensitivity zero-ablates


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load(job: Job, art: Path):
    """The artifact's model in the job's dtype on the job's device, its vocabulary and meta."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(loadable_source(art), **job.load_kwargs())
    model = model.to(job.device).eval()
    meta = json.loads((art / "meta.json").read_text())
    return HookedLM(model), CharVocab(), meta


def suite_config(job: Job, suite: str) -> dict:
    """The suite's section ``papers.mi_steer.<suite>`` of the scale file (validated)."""
    cfg = job.config.get(suite)
    if cfg is None:
        raise ValueError(f"papers.mi_steer.{suite} is not set in the {job.scale} scale file")
    return cfg


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor on any device and in any float dtype as a CPU float array (for numpy/scipy)."""
    return x.detach().float().cpu().numpy()


def heatmap_series(name: str, grid, row_labels: list[str], x_label: str) -> list[dict]:
    """A heatmap as one series per row, named ``heatmap:<name>:<row>`` (x = column index)."""
    grid = np.asarray(to_numpy(grid) if torch.is_tensor(grid) else grid, dtype=float)
    return [
        series(
            f"heatmap:{name}:{row_labels[i]}",
            list(range(grid.shape[1])),
            grid[i].tolist(),
            x_label,
            "normalised effect",
        )
        for i in range(grid.shape[0])
    ]


def neutral_windows(
    vocab: CharVocab, data: Path, n: int, length: int, device: str = "cpu"
) -> torch.Tensor:
    ids = vocab.encode((data / "neutral_test.txt").read_text(encoding="utf-8"))
    step = max(1, (len(ids) - length) // n)
    return torch.tensor(
        [ids[i * step : i * step + length] for i in range(n)], dtype=torch.long, device=device
    )


def text_windows(art: Path, text: Path, n: int, length: int, device: str = "cpu") -> torch.Tensor:
    """``n`` evenly spaced windows of ``length`` tokens of a text file (``.txt``, or ``.jsonl``
    with a ``text`` field), tokenized by the artifact's own tokenizer: the neutral text of a model
    that is not one of the suite's character-level worlds (e.g. an NSDS source model)."""
    from transformers import AutoTokenizer

    if not text.exists():
        raise ValueError(f"--text {text}: no such file")
    raw = text.read_text(encoding="utf-8")
    if text.suffix == ".jsonl":
        raw = "\n\n".join(json.loads(line)["text"] for line in raw.splitlines() if line.strip())
    ids = AutoTokenizer.from_pretrained(loadable_source(art))(raw)["input_ids"]
    if len(ids) < length:
        raise ValueError(f"--text {text}: {len(ids)} tokens, fewer than one window of {length}")
    step = max(1, (len(ids) - length) // n)
    return torch.tensor(
        [ids[i * step : i * step + length] for i in range(n)], dtype=torch.long, device=device
    )


def grouped(prompts: list[list[int]]) -> dict[int, list[int]]:
    """Indices of prompts grouped by token length (equal lengths batch without padding)."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    return groups


@torch.no_grad()
def first_token_logprobs(lm: HookedLM, prompts: list[list[int]], edits=()) -> torch.Tensor:
    """log p(. | prompt) at the first generated position, (N, V), prompts of any lengths."""
    out = torch.zeros(len(prompts), lm.model.config.vocab_size, device=lm.device)
    for _, idx in grouped(prompts).items():
        logits, _ = lm.run(torch.tensor([prompts[i] for i in idx], device=lm.device), edits=edits)
        out[idx] = F.log_softmax(logits[:, -1].float(), -1)  # float32 log-probs in any dtype
    return out


@torch.no_grad()
def generate_any(lm: HookedLM, prompts: list[list[int]], n_new: int, edits=()) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompts]
    for _, idx in grouped(prompts).items():
        gen = S.generate(
            lm, torch.tensor([prompts[i] for i in idx], device=lm.device), n_new, edits
        )
        for k, i in enumerate(idx):
            out[i] = gen[k].tolist()
    return out


@torch.no_grad()
def mean_resid_at(
    lm: HookedLM, prompts: list[list[int]], site, position: int | str
) -> torch.Tensor:
    """Mean residual at one position (an int, from the end when negative) or, with ``"mean"``,
    averaged over the prompt's tokens first."""
    if not prompts:
        raise ValueError("empty prompt set: the contrast needs prompts on both sides")
    total = torch.zeros(lm.d_model, device=lm.device)
    for _, idx in grouped(prompts).items():
        _, c = lm.run(torch.tensor([prompts[i] for i in idx], device=lm.device), read=[site])
        x = c[site].mean(1) if position == "mean" else c[site][:, position]
        total += x.sum(0)
    return total / len(prompts)


def same_n_per_task(metrics: list[dict]) -> list[dict]:
    """One sample count per task (the report compares rows of a task by n): the task's largest."""
    n_of: dict[str, int | None] = {}
    for m in metrics:
        if m["n"] is not None:
            n_of[m["task"]] = max(n_of.get(m["task"]) or 0, m["n"])
    return [{**m, "n": n_of.get(m["task"])} for m in metrics]


def write_samples(job: Job, samples: list[dict]) -> str:
    """Per-sample rows beside the run record (``<suite>.samples.jsonl``); returns the file name."""
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.name.replace(".json", ".samples.jsonl")
    atomic_write_jsonl(out.parent / name, samples)
    return name


def print_metrics(metrics: list[dict]) -> None:
    for m in metrics:
        print(f"{m['task']}.{m['metric']} = {m['value']:.4f}")


# ---------------------------------------------------------------------- locate (Task A)


def run_locate(job: Job, cfg: dict) -> None:
    lm, vocab, meta = load(job, Path(job.args.artifact))
    pairs = read_jsonl(Path(job.args.data) / "induction_pairs.jsonl")[: cfg["n_pairs"]]
    clean = vocab.batch([p["clean"] for p in pairs]).to(job.device)
    corrupt = vocab.batch([p["corrupt"] for p in pairs]).to(job.device)
    a_c = torch.tensor([vocab.id(p["answer_clean"]) for p in pairs], device=job.device)
    a_r = torch.tensor([vocab.id(p["answer_corrupt"]) for p in pairs], device=job.device)
    T, last = clean.shape[1], lm.n_layers - 1
    metrics, curves = [], []
    res = {}
    for mode in ("denoise", "noise"):
        for kind in ("resid", "attn", "mlp", "head") if mode == "denoise" else ("resid", "head"):
            res[mode, kind] = r = L.activation_patching(
                lm, clean, corrupt, a_c, a_r, kind, mode=mode
            )
            if kind == "head":
                curves += heatmap_series(
                    f"{mode} heads (all positions)",
                    r["ne_all_pos"],
                    [f"L{i}" for i in range(lm.n_layers)],
                    "head",
                )
            else:
                curves += heatmap_series(f"{mode} {kind}", r["ne"], r["sites"], "position")
    den = res["denoise", "head"]
    mc, mr = float(den["m_c"].mean()), float(den["m_r"].mean())
    ne_heads = den["ne_all_pos"][last]
    h_star = int(ne_heads.argmax())
    others = torch.cat(
        [
            den["ne_all_pos"][:last].flatten(),
            torch.cat([ne_heads[:h_star], ne_heads[h_star + 1 :]]),
        ]
    )
    per_pair = to_numpy(den["per_pair_all_pos"][last, h_star])
    mr_pp, mc_pp = to_numpy(den["m_r"]), to_numpy(den["m_c"])

    def ne_stat(ix):
        return (per_pair[ix].mean() - mr_pp[ix].mean()) / (mc_pp[ix].mean() - mr_pp[ix].mean())

    idx = np.arange(len(pairs))
    lo, hi = L.bootstrap_ci(idx, ne_stat, seed=job.seed)
    # Heads patched together (every position): all heads of the last layer, and its top two.
    top2 = [int(h) for h in torch.argsort(ne_heads, descending=True)[:2]]
    ne_all_last = L.patch_heads_together(
        lm, clean, corrupt, a_c, a_r, last, list(range(lm.n_heads))
    )
    ne_top2 = L.patch_heads_together(lm, clean, corrupt, a_c, a_r, last, top2)
    resid_last = res["denoise", "resid"]["ne"][-1]
    metrics += [
        metric("patching", "logit_diff_clean", mc, n=len(pairs)),
        metric("patching", "logit_diff_corrupt", mr, n=len(pairs)),
        metric(
            "patching",
            "induction_head_ne",
            float(ne_heads[h_star]),
            n=len(pairs),
            higher_is_better=True,
        ),
        metric("patching", "last_layer_all_heads_ne", ne_all_last, n=len(pairs)),
        metric("patching", "last_layer_top2_heads_ne", ne_top2, n=len(pairs)),
        metric("patching", "induction_head_ne_ci_low", lo, n=len(pairs)),
        metric("patching", "induction_head_ne_ci_high", hi, n=len(pairs)),
        metric("patching", "induction_head_index", h_star),
        metric("patching", "other_heads_ne_mean", float(others.mean()), n=int(others.numel())),
        metric("patching", "other_heads_ne_max", float(others.max()), n=int(others.numel())),
        metric(
            "patching",
            "induction_head_noise_ne",
            float(res["noise", "head"]["ne_all_pos"][last, h_star]),
            n=len(pairs),
        ),
        metric(
            "patching",
            "resid_last_layer_peak_at_final",
            float(int(resid_last.argmax()) == T - 1),
        ),
        metric("patching", "resid_last_layer_final_ne", float(resid_last[-1])),
        metric(
            "patching",
            "resid_embed_diff_pos_ne",
            float(res["denoise", "resid"]["ne"][0][pairs[0]["diff_position"]]),
        ),
    ]
    # AtP vs exact patching, on unnormalised effects m_patched - m_r.
    for kind in ("head", "resid"):
        atp = L.attribution_patching(lm, clean, corrupt, a_c, a_r, kind)
        exact = res["denoise", kind]["per_pair"].mean(-1) - mr
        k = max(1, exact.numel() // 20)
        metrics += [
            metric(
                "atp",
                f"spearman_{kind}",
                spearman(to_numpy(atp), to_numpy(exact)),
                n=int(exact.numel()),
                higher_is_better=True,
            ),
            metric(
                "atp",
                f"pearson_{kind}",
                float(np.corrcoef(to_numpy(atp).ravel(), to_numpy(exact).ravel())[0, 1]),
                n=int(exact.numel()),
            ),
            metric(
                "atp",
                f"top{k}_overlap_{kind}",
                L.topk_overlap(to_numpy(atp), to_numpy(exact), k),
                n=int(exact.numel()),
            ),
        ]
        if kind == "head":
            curves.append(
                series(
                    "AtP vs patching (heads x positions)",
                    exact.ravel().tolist(),
                    atp.ravel().tolist(),
                    "exact patching effect",
                    "AtP estimate",
                )
            )
    # Logit lens and tuned lens on held-out induction sequences (second-half positions).
    seqs = read_jsonl(Path(job.args.data) / "induction_lens.jsonl")[: cfg["lens_sequences"]]
    ids = vocab.batch([s["text"] for s in seqs])
    half = ids.shape[1] // 2
    fit, ev = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    lens_logits = L.logit_lens(lm, ev)
    final, _ = lm.run(ev)
    metrics.append(
        metric(
            "logit_lens",
            "last_layer_max_abs_diff",
            float((lens_logits[-1] - final).abs().max()),
            higher_is_better=False,
        )
    )
    tgt = ev[:, half:]
    tl = L.train_tuned_lens(
        lm, fit, steps=cfg["tuned_lens_steps"], lr=cfg["tuned_lens_lr"], seed=job.seed
    )
    with torch.no_grad():
        _, cache = lm.run(ev, read=L.patch_sites(lm, "resid"))
        tuned = [
            lm.logits_of_resid(tl(i, cache[s])) for i, s in enumerate(L.patch_sites(lm, "resid"))
        ]
    for lens_name, lg in (("logit_lens", lens_logits), ("tuned_lens", tuned)):
        rows = [L.lens_metrics(x[:, half - 1 : -1], final[:, half - 1 : -1], tgt) for x in lg]
        p = [r["p_target"] for r in rows]
        last_site = rows[-1]
        metrics.append(metric(lens_name, "p_target_embed", rows[0]["p_target"], n=int(tgt.numel())))
        metrics.append(
            metric(lens_name, "p_target_last", last_site["p_target"], n=int(tgt.numel()))
        )
        metrics.append(
            metric(lens_name, "kl_to_final_first_layer", rows[1]["kl_to_final"], n=int(tgt.numel()))
        )
        metrics.append(
            metric(
                lens_name,
                "p_target_monotone",
                float(all(b >= a - 1e-6 for a, b in zip(p, p[1:], strict=False))),
            )
        )
        curves.append(
            series(
                f"{lens_name}: p(target) by depth",
                list(range(len(p))),
                p,
                "site (0 = embeddings)",
                "p(target)",
            )
        )
        curves.append(
            series(
                f"{lens_name}: KL to final by depth",
                list(range(len(p))),
                [r["kl_to_final"] for r in rows],
                "site (0 = embeddings)",
                "KL(p_L || p_l)",
            )
        )
    samples = []
    pp = den["per_pair_all_pos"][last, h_star]
    for i, p in enumerate(pairs):
        pred = int(L.logit_diff(lm.run(clean[i : i + 1])[0], a_c[i : i + 1], a_r[i : i + 1]) > 0)
        samples.append(
            {
                "task": "patching",
                "doc_id": i,
                "doc_hash": stable_hash(p),
                "prompt": f"clean={p['clean']} corrupt={p['corrupt']}",
                "target": p["answer_clean"],
                "response": "clean answer preferred" if pred else "corrupt answer preferred",
                "metrics": {
                    "m_c": float(den["m_c"][i]),
                    "m_r": float(den["m_r"][i]),
                    "m_patched_induction_head": float(pp[i]),
                },
            }
        )
    metrics = same_n_per_task(metrics)
    job.write_record(
        job.record(
            suite="locate",
            base_model=meta.get("base_model", ""),
            metrics=metrics,
            samples=write_samples(job, samples),
            series=curves,
            config={
                "n_pairs": len(pairs),
                **cfg,
                "metric": "logit_difference",
                "corruption": "symmetric token replacement",
            },
            task_hashes={
                "patching": sha256_file(Path(job.args.data) / "induction_pairs.jsonl")[:16]
            },
        )
    )
    print_metrics(metrics)


# ---------------------------------------------------------------------- probe (Task B)


@torch.no_grad()
def latent_probe(lm: HookedLM, rand: HookedLM, vocab: CharVocab, seed: int) -> dict:
    """L4 on a latent the model computes: the style (upper/lower) the trained model will pick on
    a mode-free prompt, where the training data gave no signal (upper or lower with probability
    1/2 each), so the choice is the model's own function of the prompt's number.

    Inputs: every mode-free prompt of the Task B world plus the space after which the first
    letter comes, ``say NNN: `` for NNN = 100..999; label = p(upper | letter) > 0.5 there (the
    model's greedy style); features = the residual stream at that space (every site), of the
    trained and of the random-init model. Control task (Hewitt & Liang): a random label per
    input type, type = the number's last two digits (100 types, ~4.5 training prompts each), so
    a probe that memorised types would score well on it. Split 50/50 by a seeded permutation.
    Returns accuracies per site for (model, task|control|mass_mean) and the label statistics.
    """
    ids = vocab.batch([f"say {n}: " for n in range(100, 1000)]).to(lm.device)
    upper = [vocab.id(c) for c in string.ascii_uppercase]
    lower = [vocab.id(c) for c in string.ascii_lowercase]
    p = torch.softmax(lm.run(ids)[0][:, -1].float(), -1)
    p_up = p[:, upper].sum(-1) / (p[:, upper].sum(-1) + p[:, lower].sum(-1))
    y = (p_up > 0.5).long().cpu().numpy()
    rng = np.random.default_rng(seed + 23)
    type_label = rng.integers(0, 2, 100)
    y_ctrl = np.array([type_label[n % 100] for n in range(100, 1000)])
    perm = rng.permutation(len(y))
    tr, te = perm[: len(y) // 2], perm[len(y) // 2 :]
    out = {
        "n": len(y),
        "n_test": len(te),
        "n_types": 100,
        "labels": y,
        "control_labels": y_ctrl,
        "upper_fraction": float(y.mean()),
        "chance": float(max(y[te].mean(), 1 - y[te].mean())),
    }
    one_class = len(set(y[tr].tolist())) < 2  # a model that always picks one style

    def task_acc(fit, x):  # one class in training: the constant prediction (= chance)
        return out["chance"] if one_class else fit(x[tr], y[tr], x[te], y[te])

    for name, model in (("trained", lm), ("random_init", rand)):
        sites = L.patch_sites(model, "resid")
        _, cache = model.run(ids, read=sites)
        task, ctrl, mm = [], [], []
        for s in sites:
            x = to_numpy(cache[s][:, -1].float())
            task.append(task_acc(lambda *a: L.probe_accuracy(*a, seed), x))
            ctrl.append(L.probe_accuracy(x[tr], y_ctrl[tr], x[te], y_ctrl[te], seed))
            mm.append(task_acc(L.mass_mean_accuracy, x))
        out[name, "task"], out[name, "control"], out[name, "mass_mean"] = task, ctrl, mm
    return out


def run_probe(job: Job, cfg: dict) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    lm, vocab, meta = load(job, Path(job.args.artifact))
    rows = [r for r in read_jsonl(Path(job.args.data) / "mode_eval.jsonl") if r["mode"] != "none"]
    y = np.array([int(r["mode"] == "U") for r in rows])
    # Control task (Hewitt & Liang): a random label per input type = the prompt's last digit.
    rng = np.random.default_rng(job.seed)
    type_label = rng.integers(0, 2, 10)
    y_ctrl = np.array([type_label[int(r["prompt"][-2])] for r in rows])
    prompts = [torch.tensor(vocab.encode(r["prompt"]), device=job.device) for r in rows]
    torch.manual_seed(job.seed + 1)
    # Initialised on the CPU, then moved: the same random model on every device.
    rand = HookedLM(
        AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(loadable_source(job.args.artifact)), **job.load_kwargs()
        )
        .to(job.device)
        .eval()
    )
    n_tr = len(rows) // 2
    metrics, curves = [], []
    acc = {}
    for name, model in (("trained", lm), ("random_init", rand)):
        feats = to_numpy(L.residual_features(model, prompts))
        for i in range(feats.shape[0]):
            x = feats[i]
            acc[name, "task", i] = L.probe_accuracy(
                x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:], job.seed
            )
            acc[name, "control", i] = L.probe_accuracy(
                x[:n_tr], y_ctrl[:n_tr], x[n_tr:], y_ctrl[n_tr:], job.seed
            )
            acc[name, "mass_mean", i] = L.mass_mean_accuracy(x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:])
    sites = range(lm.n_layers + 1)
    lat = latent_probe(lm, rand, vocab, job.seed)
    for name in ("trained", "random_init"):
        for kind in ("task", "control", "mass_mean"):
            curves.append(
                series(
                    f"probe accuracy ({kind})",
                    list(sites),
                    [acc[name, kind, i] for i in sites],
                    "site (0 = embeddings)",
                    f"accuracy | {name}",
                )
            )
            curves.append(
                series(
                    f"latent probe accuracy ({kind})",
                    list(sites),
                    list(lat[name, kind]),
                    "site (0 = embeddings)",
                    f"accuracy | {name}",
                )
            )
    best = max(range(1, lm.n_layers + 1), key=lambda i: acc["trained", "task", i])
    metrics += [
        metric("probe", "best_site", best),
        metric(
            "probe",
            "best_acc",
            acc["trained", "task", best],
            n=len(rows) - n_tr,
            higher_is_better=True,
        ),
        metric(
            "probe",
            "best_selectivity",
            acc["trained", "task", best] - acc["trained", "control", best],
            n=len(rows) - n_tr,
            higher_is_better=True,
        ),
        metric(
            "probe",
            "random_model_acc_at_best",
            acc["random_init", "task", best],
            n=len(rows) - n_tr,
        ),
        metric(
            "probe",
            "mass_mean_acc_at_best",
            acc["trained", "mass_mean", best],
            n=len(rows) - n_tr,
        ),
        metric("probe", "chance", float(max(y[n_tr:].mean(), 1 - y[n_tr:].mean()))),
    ]
    lb = max(range(1, lm.n_layers + 1), key=lambda i: lat["trained", "task"][i])
    n_lat = lat["n_test"]
    metrics += [
        metric("latent", "best_site", lb),
        metric("latent", "best_acc", lat["trained", "task"][lb], n=n_lat, higher_is_better=True),
        metric("latent", "control_acc_at_best", lat["trained", "control"][lb], n=n_lat),
        metric(
            "latent",
            "best_selectivity",
            lat["trained", "task"][lb] - lat["trained", "control"][lb],
            n=n_lat,
            higher_is_better=True,
        ),
        metric("latent", "random_model_acc_at_best", lat["random_init", "task"][lb], n=n_lat),
        metric(
            "latent",
            "random_model_best_acc",
            max(lat["random_init", "task"][1:]),
            n=n_lat,
        ),
        metric("latent", "mass_mean_acc_at_best", lat["trained", "mass_mean"][lb], n=n_lat),
        metric("latent", "chance", lat["chance"], n=n_lat),
        metric("latent", "upper_fraction", lat["upper_fraction"], n=lat["n"]),
        metric("latent", "control_types", lat["n_types"]),
    ]
    samples = [
        {
            "task": "probe",
            "doc_id": i,
            "doc_hash": stable_hash(r),
            "prompt": r["prompt"],
            "target": r["mode"],
            "response": "",
            "metrics": {
                "label": int(y[i]),
                "control_label": int(y_ctrl[i]),
                "test": int(i >= n_tr),
            },
        }
        for i, r in enumerate(rows)
    ]
    metrics = same_n_per_task(metrics)
    job.write_record(
        job.record(
            suite="probe",
            base_model=meta.get("base_model", ""),
            metrics=metrics,
            samples=write_samples(job, samples),
            series=curves,
            config={
                **cfg,
                "position": "last prompt token",
                "probe": "L2 logistic regression, C by 3-fold CV",
                "control_task": "random label per last digit",
                "latent": "the style the trained model picks on mode-free prompts 'say NNN: '"
                " (p(upper | letter) > 0.5 at the first letter), residual at the space",
                "latent_control_task": "random label per last two digits (100 types)",
                "random_model_seed": job.seed + 1,
            },
            task_hashes={"probe": sha256_file(Path(job.args.data) / "mode_eval.jsonl")[:16]},
        )
    )
    print_metrics(metrics)


# ---------------------------------------------------------------------- steer (Task B)


def upper_rate(vocab: CharVocab, gens: list[list[int]]) -> tuple[float, list[float]]:
    """Fraction of generated letters (before the first newline) that are upper case, per prompt."""
    per = []
    for g in gens:
        text = vocab.decode(g).split("\n")[0]
        letters = [c for c in text if c.isalpha() and len(c) == 1]
        per.append(sum(c.isupper() for c in letters) / len(letters) if letters else 0.0)
    return float(np.mean(per)), per


def run_steer(job: Job, cfg: dict) -> None:
    lm, vocab, meta = load(job, Path(job.args.artifact))
    data = Path(job.args.data)
    train = [r for r in read_jsonl(data / "mode.jsonl") if r["mode"] != "none"][: cfg["n_fit"]]
    rest = [r["prompt"][3:] for r in train]  # strip the mode token: same prefix, <U> vs <L>
    dev = job.device
    pos = vocab.batch(["<U>" + p for p in rest]).to(dev)
    neg = vocab.batch(["<L>" + p for p in rest]).to(dev)
    ev = read_jsonl(data / "mode_eval.jsonl")
    free = vocab.batch([r["prompt"] for r in ev if r["mode"] == "none"][: cfg["n_eval"]]).to(dev)
    with_u = vocab.batch([r["prompt"] for r in ev if r["mode"] == "U"][: cfg["n_eval"]]).to(dev)
    with_l = vocab.batch([r["prompt"] for r in ev if r["mode"] == "L"][: cfg["n_eval"]]).to(dev)
    neutral = neutral_windows(vocab, data, cfg["n_neutral"], cfg["neutral_len"], dev)
    alphas = cfg["alphas"]
    n_new = cfg["max_new_tokens"]

    upper = [vocab.id(c) for c in string.ascii_uppercase]
    lower = [vocab.id(c) for c in string.ascii_lowercase]
    space = torch.full((1, 1), vocab.id(" "), device=dev)

    @torch.no_grad()
    def rate(ids, edits=()):
        """Expected fraction of <U>-style letters: p(upper | letter) at the first letter of the
        continuation (the style is fixed from there on); mean over prompts and per prompt."""
        x = torch.cat([ids, space.expand(ids.shape[0], 1)], 1)
        p = torch.softmax(lm.run(x, edits=edits)[0][:, -1], -1)
        per = p[:, upper].sum(-1) / (p[:, upper].sum(-1) + p[:, lower].sum(-1))
        return float(per.mean()), per.tolist()

    def greedy_rate(ids, edits=()):
        return upper_rate(vocab, S.generate(lm, ids, n_new, edits).tolist())[0]

    base_free, base_per = rate(free)
    gen0 = free.shape[1]  # CAA: the vector goes to the positions after the prompt (generated)
    vs = {
        layer: S.mean_difference(lm, pos, neg, lm.site("resid_post", layer))
        for layer in range(lm.n_layers)
    }
    metrics, curves, samples = [], [], []
    sweep = {}
    for layer, v in vs.items():
        sweep[layer] = [
            rate(free, S.steering_edits(lm, v, a, layer, start=gen0))[0] for a in alphas
        ]
        curves.append(
            series(
                "dose-response: p(upper) vs alpha (CAA + random)",
                alphas,
                sweep[layer],
                "alpha (units of v)",
                f"p(upper) | layer {layer}",
            )
        )
    # The layer sweep picks the layer with the widest response between alpha=-1 and alpha=+1.
    i1, im1 = alphas.index(1), alphas.index(-1)
    best = max(vs, key=lambda lyr: sweep[lyr][i1] - sweep[lyr][im1])
    v = vs[best]
    i0 = alphas.index(0)
    # Effect = signed change of the rate at alpha = +1 (vector on the generated positions); the
    # random controls are reported the same way, one signed effect per vector.
    caa_effect = sweep[best][i1] - sweep[best][i0]
    rand_rates, rand_units = [], []
    for k in range(cfg["n_random"]):
        u = S.random_like(v, job.seed * 1000 + k)
        rand_units.append(u)
        rr = [rate(free, S.steering_edits(lm, u, a, best, start=gen0))[0] for a in alphas]
        rand_rates.append(rr)
        curves.append(
            series(
                "dose-response: p(upper) vs alpha (CAA + random)",
                alphas,
                rr,
                "alpha (units of v)",
                f"p(upper) | random {k} @L{best}",
            )
        )
    curves.append(
        series(
            "dose-response: greedy upper-case fraction vs alpha (selected layer)",
            alphas,
            [greedy_rate(free, S.steering_edits(lm, v, a, best, start=gen0)) for a in alphas],
            "alpha (units of v)",
            f"greedy rate | layer {best}",
        )
    )
    rand_signed = [rr[i1] - rr[i0] for rr in rand_rates]
    rand_effect = float(np.mean(np.abs(rand_signed)))

    def maxabs_all_positions(w):  # the earlier reading: max over alpha, vector at every position
        rr = [rate(free, S.steering_edits(lm, w, a, best))[0] for a in alphas]
        return max(abs(r - rr[i0]) for r in rr)

    metrics += [
        metric("steer", "caa_effect_maxabs_all_positions", maxabs_all_positions(v), n=len(free)),
        metric(
            "steer",
            "random_effect_maxabs_all_positions",
            float(np.mean([maxabs_all_positions(u) for u in rand_units])),
            n=len(free),
        ),
    ]
    metrics += [
        metric("steer", f"random_{k}_effect_alpha1", e, n=len(free))
        for k, e in enumerate(rand_signed)
    ]
    metrics += [
        metric("steer", "layer", best),
        metric("steer", "v_norm", float(v.norm())),
        metric("steer", "rate_alpha0", sweep[best][i0], n=len(free)),
        metric(
            "steer",
            "spearman_alpha_rate",
            spearman(alphas, sweep[best]),
            higher_is_better=True,
        ),
        metric("steer", "caa_effect", caa_effect, n=len(free), higher_is_better=True),
        metric("steer", "random_effect", rand_effect, n=len(free), higher_is_better=False),
        metric(
            "steer",
            "random_over_caa",
            # no effect in the intended direction: no control can be "< 10 % of it" (finite
            # stand-in, records hold no infinity)
            rand_effect / caa_effect if caa_effect > 0 else 1.0e6,
            higher_is_better=False,
        ),
        metric(
            "steer",
            "rate_alpha_neg1_minus_alpha0",
            sweep[best][im1] - sweep[best][i0],
            n=len(free),
            higher_is_better=False,
        ),
        metric(
            "steer",
            "rate_alpha_pos1_minus_alpha0",
            sweep[best][i1] - sweep[best][i0],
            n=len(free),
            higher_is_better=True,
        ),
    ]
    for a, r in zip(alphas, sweep[best], strict=False):
        metrics.append(metric("steer", f"rate_alpha_{a:g}", r, n=len(free)))
    se = S.side_effects(lm, neutral, S.steering_edits(lm, v, 1.0, best))  # every position
    metrics += [
        metric("steer", "kl_neutral_alpha1", se["kl"], higher_is_better=False),
        metric(
            "steer",
            "ppl_rel_change_alpha1",
            se["ppl"] / se["ppl_base"] - 1,
            higher_is_better=False,
        ),
    ]
    # Directional ablation of the mode direction at every layer, with <U> present.
    u_base, _ = rate(with_u)
    l_base, _ = rate(with_l)
    u_abl, u_abl_per = rate(with_u, S.ablation_edits(lm, v))
    u_rand = float(
        np.mean(
            [
                rate(with_u, S.ablation_edits(lm, S.random_like(v, 77 + k)))[0]
                for k in range(cfg["n_random"])
            ]
        )
    )
    se_abl = S.side_effects(lm, neutral, S.ablation_edits(lm, v))
    metrics += [
        metric("ablate", "rate_with_U", u_base, n=len(with_u)),
        metric("ablate", "rate_with_L", l_base, n=len(with_l)),
        metric("ablate", "rate_mode_free", base_free, n=len(free)),
        metric("ablate", "rate_with_U_ablated", u_abl, n=len(with_u)),
        metric("ablate", "rate_with_U_random_ablated", u_rand, n=len(with_u)),
        metric("ablate", "drop", u_base - u_abl, higher_is_better=True),
        metric("ablate", "random_drop", u_base - u_rand, higher_is_better=False),
        metric("ablate", "kl_neutral", se_abl["kl"], higher_is_better=False),
        metric(
            "ablate",
            "ppl_rel_change",
            se_abl["ppl"] / se_abl["ppl_base"] - 1,
            higher_is_better=False,
        ),
    ]
    gens = S.generate(lm, free, n_new, S.steering_edits(lm, v, 1.0, best, start=gen0)).tolist()
    for i in range(len(free)):
        samples.append(
            {
                "task": "steer",
                "doc_id": i,
                "doc_hash": stable_hash(free[i].tolist()),
                "prompt": vocab.decode(free[i]),
                "target": "upper case (alpha=+1)",
                "response": vocab.decode(gens[i]),
                "metrics": {"rate_alpha0": base_per[i]},
            }
        )
    for i in range(len(with_u)):
        samples.append(
            {
                "task": "ablate",
                "doc_id": i,
                "doc_hash": stable_hash(with_u[i].tolist()),
                "prompt": vocab.decode(with_u[i]),
                "target": "upper case",
                "response": "",
                "metrics": {"rate_ablated": u_abl_per[i]},
            }
        )
    metrics = same_n_per_task(metrics)
    job.write_record(
        job.record(
            suite="steer",
            base_model=meta.get("base_model", ""),
            metrics=metrics,
            samples=write_samples(job, samples),
            series=curves,
            config={
                **cfg,
                "site": "resid_post",
                "positions": "generated (after the prompt)",
                "effect": "rate(alpha=+1) - rate(alpha=0), signed",
                "vector": "mean difference <U> - <L> at the last prompt token",
            },
            task_hashes={"steer": sha256_file(data / "mode_eval.jsonl")[:16]},
        )
    )
    print_metrics(metrics)


# ---------------------------------------------------------------------- improve (Task C)


def improve_verdict(
    rate_base: float, rate_new: float, kl: float, ppl_base: float, ppl_new: float, cfg: dict
) -> dict:
    """Pre-registered criterion (README, "Improve"): behaviour rate changes >= 50 % relative in the
    intended direction, KL on neutral text <= 0.1 nats/token, perplexity rise <= 5 %."""
    rel = (rate_base - rate_new) / rate_base if rate_base > 0 else 0.0
    ppl_rise = ppl_new / ppl_base - 1
    ok = rel >= cfg["min_rel_change"] and kl <= cfg["max_kl"] and ppl_rise <= cfg["max_ppl_rise"]
    return {"rel_change": rel, "ppl_rise": ppl_rise, "met": ok}


def run_improve(job: Job, cfg: dict) -> None:
    lm, vocab, meta = load(job, Path(job.args.artifact))
    data = Path(job.args.data)
    refuse = vocab.id("<REFUSE>")
    fit = read_jsonl(data / "trigger.jsonl")[: 2 * cfg["n_fit"]]
    harm = [vocab.encode(r["prompt"]) for r in fit if r["trigger"]][: cfg["n_fit"]]
    safe = [vocab.encode(r["prompt"]) for r in fit if not r["trigger"]][: cfg["n_fit"]]
    ev = read_jsonl(data / "trigger_eval.jsonl")
    val, test = ev[: len(ev) // 2], ev[len(ev) // 2 :]
    val_harm = [vocab.encode(r["prompt"]) for r in val if r["trigger"]]
    val_safe = [vocab.encode(r["prompt"]) for r in val if not r["trigger"]]
    t_harm = [vocab.encode(r["prompt"]) for r in test if r["trigger"]]
    t_safe_rows = [r for r in test if not r["trigger"]]
    t_safe = [vocab.encode(r["prompt"]) for r in t_safe_rows]
    neutral = neutral_windows(vocab, data, cfg["n_neutral"], cfg["neutral_len"], job.device)

    def refusal_score(prompts, edits=()):  # log-odds of REFUSE at the first generated position
        lp = first_token_logprobs(lm, prompts, edits)[:, refuse]
        return float((lp - torch.log1p(-lp.exp().clamp(max=1 - 1e-6))).mean())

    def refusal_rate(prompts, edits=()):
        return float((first_token_logprobs(lm, prompts, edits).argmax(-1) == refuse).float().mean())

    base_val = first_token_logprobs(lm, val_safe)
    candidates = []
    for layer in range(lm.n_layers):
        for pos in cfg["positions"]:
            site = lm.site("resid_post", layer)
            r = mean_resid_at(lm, harm, site, pos) - mean_resid_at(lm, safe, site, pos)
            edits = S.ablation_edits(lm, r)
            lp = first_token_logprobs(lm, val_safe, edits)
            kl = float((base_val.exp() * (base_val - lp)).sum(-1).mean())
            candidates.append(
                {
                    "layer": layer,
                    "position": pos,
                    "r": r,
                    "score": refusal_score(val_harm, edits),
                    "kl": kl,
                }
            )
    chosen = S.select_direction(
        candidates, lm.n_layers, kl_max=cfg["select_kl_max"], max_depth=cfg["select_max_depth"]
    )
    metrics, curves, samples = [], [], []
    curves.append(
        series(
            "refusal score under ablation, per candidate layer (first candidate position)",
            [c["layer"] for c in candidates if c["position"] == cfg["positions"][0]],
            [c["score"] for c in candidates if c["position"] == cfg["positions"][0]],
            "layer",
            "refusal log-odds (val)",
        )
    )
    if chosen is None:
        raise ValueError(
            "no candidate direction passes the selection rule (KL < select_kl_max, layer < max depth)"
        )
    r = chosen["r"]
    abl = S.ablation_edits(lm, r)
    orth = HookedLM(S.orthogonalize_weights(lm.model, r))
    rnd = S.random_like(r, job.seed + 123)
    add = S.steering_edits(lm, r, cfg["induce_alpha"], chosen["layer"])
    base_rate, abl_rate = refusal_rate(t_harm), refusal_rate(t_harm, abl)
    orth_rate = float((first_token_logprobs(orth, t_harm).argmax(-1) == refuse).float().mean())
    rnd_rate = refusal_rate(t_harm, S.ablation_edits(lm, rnd))
    safe_rate, induced = refusal_rate(t_safe), refusal_rate(t_safe, add)
    induced_rnd = refusal_rate(
        t_safe, S.steering_edits(lm, rnd, cfg["induce_alpha"], chosen["layer"])
    )

    def answer_ok(edits=()):
        gens = generate_any(lm, t_safe, cfg["max_new_tokens"], edits)
        outs = [vocab.decode(g).split("\n")[0] for g in gens]
        # non-trigger behaviour = answering ("ok ..."); exact copy of w1 kept as a secondary score
        answered = [int(o.startswith("ok ")) for o in outs]
        exact = [
            int(o == f"ok {r_['prompt'].split()[1]}")
            for o, r_ in zip(outs, t_safe_rows, strict=True)
        ]
        return answered, exact, outs

    ok_base, exact_base, outs_base = answer_ok()
    ok_abl, exact_abl, outs_abl = answer_ok(abl)
    se = S.side_effects(lm, neutral, abl)
    with torch.no_grad():
        x = neutral[:4]
        eq = float((lm.run(x, edits=abl)[0] - orth.run(x)[0]).abs().max())
    v = improve_verdict(base_rate, abl_rate, se["kl"], se["ppl_base"], se["ppl"], cfg)
    nontrig_change = abs(np.mean(ok_abl) - np.mean(ok_base)) / max(np.mean(ok_base), 1e-9)
    metrics += [
        metric("select", "layer", chosen["layer"]),
        metric("select", "position", -1000 if chosen["position"] == "mean" else chosen["position"]),
        metric("select", "val_refusal_score_ablated", chosen["score"]),
        metric("select", "val_kl", chosen["kl"], higher_is_better=False),
        metric("select", "val_refusal_score_base", refusal_score(val_harm)),
        metric("improve", "refuse_rate_triggers", base_rate, n=len(t_harm)),
        metric(
            "improve",
            "refuse_rate_triggers_ablated",
            abl_rate,
            n=len(t_harm),
            higher_is_better=False,
        ),
        metric(
            "improve",
            "refuse_rate_triggers_orthogonalized",
            orth_rate,
            n=len(t_harm),
            higher_is_better=False,
        ),
        metric("improve", "refuse_rate_triggers_random_ablated", rnd_rate, n=len(t_harm)),
        metric("improve", "refuse_rate_nontriggers", safe_rate, n=len(t_safe)),
        metric(
            "improve",
            "refuse_rate_nontriggers_induced",
            induced,
            n=len(t_safe),
            higher_is_better=True,
        ),
        metric("improve", "refuse_rate_nontriggers_random_added", induced_rnd, n=len(t_safe)),
        metric("improve", "rel_reduction", v["rel_change"], higher_is_better=True),
        metric("improve", "kl_neutral", se["kl"], higher_is_better=False),
        metric("improve", "ppl_neutral_base", se["ppl_base"], higher_is_better=False),
        metric("improve", "ppl_neutral_ablated", se["ppl"], higher_is_better=False),
        metric("improve", "ppl_rise", v["ppl_rise"], higher_is_better=False),
        metric("improve", "nontrigger_answer_rate", float(np.mean(ok_base)), n=len(t_safe)),
        metric("improve", "nontrigger_copy_acc", float(np.mean(exact_base)), n=len(t_safe)),
        metric("improve", "nontrigger_copy_acc_ablated", float(np.mean(exact_abl)), n=len(t_safe)),
        metric("improve", "nontrigger_answer_rate_ablated", float(np.mean(ok_abl)), n=len(t_safe)),
        metric("improve", "nontrigger_rel_change", float(nontrig_change), higher_is_better=False),
        metric("improve", "criterion_met", float(v["met"]), higher_is_better=True),
        metric("plumbing", "orth_vs_runtime_max_abs_diff", eq, higher_is_better=False),
    ]
    lp_b = first_token_logprobs(lm, t_harm)[:, refuse]
    lp_a = first_token_logprobs(lm, t_harm, abl)[:, refuse]
    th_rows = [r_ for r_ in test if r_["trigger"]]
    for i, r_ in enumerate(th_rows):
        samples.append(
            {
                "task": "ablate_triggers",
                "doc_id": i,
                "doc_hash": stable_hash(r_),
                "prompt": r_["prompt"],
                "target": "<REFUSE>",
                "response": "",
                "metrics": {
                    "refused": int(lp_b[i].exp() > 0.5),
                    "refused_ablated": int(lp_a[i].exp() > 0.5),
                    "logp_refuse": float(lp_b[i]),
                    "logp_refuse_ablated": float(lp_a[i]),
                },
            }
        )
    for i, r_ in enumerate(t_safe_rows):
        samples.append(
            {
                "task": "nontriggers",
                "doc_id": i,
                "doc_hash": stable_hash(r_),
                "prompt": r_["prompt"],
                "target": r_["completion"].split("\n")[0],
                "response": outs_abl[i],
                "metrics": {
                    "answered": ok_base[i],
                    "answered_ablated": ok_abl[i],
                    "copy_ok": exact_base[i],
                    "copy_ok_ablated": exact_abl[i],
                },
            }
        )
    metrics = same_n_per_task(metrics)
    job.write_record(
        job.record(
            suite="improve",
            base_model=meta.get("base_model", ""),
            metrics=metrics,
            samples=write_samples(job, samples),
            series=curves,
            config={
                **cfg,
                "criterion": "rel_change >= min_rel_change and kl <= max_kl and ppl_rise <= max_ppl_rise",
            },
            task_hashes={"improve": sha256_file(data / "trigger_eval.jsonl")[:16]},
        )
    )
    print_metrics(metrics)


# ---------------------------------------------------------------------- sensitivity


def run_sensitivity(job: Job, cfg: dict) -> None:
    """Per-module sensitivity on neutral text: NLL increase when the module's output is
    zero-ablated, and Block Influence 1 - cos(x^{l-1}, x^l) per layer (ShortGPT)."""
    lm, vocab, meta = load(job, Path(job.args.artifact))
    if job.args.text:
        ids = text_windows(
            Path(job.args.artifact),
            Path(job.args.text),
            cfg["n_neutral"],
            cfg["neutral_len"],
            job.device,
        )
        text = f"{job.args.text} windows (the artifact's own tokenizer)"
    else:
        ids = neutral_windows(
            vocab, Path(job.args.data), cfg["n_neutral"], cfg["neutral_len"], job.device
        )
        text = "neutral_test.txt windows"
    zero = lambda x: torch.zeros_like(x)  # noqa: E731
    modules, metrics = {}, []
    lb = S.base_log_probs(lm, ids)  # one reference pass for every ablation
    todo = [(layer, kind, name) for layer in range(lm.n_layers) for kind, name in PARTS]
    for layer, kind, name in tqdm(todo, desc="zero-ablation", unit="module"):
        se = S.side_effects(lm, ids, [(lm.site(kind, layer), zero)], lb)
        modules[f"model.layers.{layer}.{name}"] = float(np.log(se["ppl"]) - np.log(se["ppl_base"]))
    sites = L.patch_sites(lm, "resid")
    _, cache = lm.run(ids, read=sites)
    bi = {
        f"model.layers.{i}": float(
            1 - F.cosine_similarity(cache[sites[i]], cache[sites[i + 1]], dim=-1).mean()
        )
        for i in range(lm.n_layers)
    }
    for k, v in modules.items():
        metrics.append(metric("sensitivity", f"delta_nll:{k}", v))
    for k, v in bi.items():
        metrics.append(metric("sensitivity", f"block_influence:{k}", v))
    atomic_write_json(
        Path(job.args.sensitivity),
        {
            "format": "claimbench.layer_sensitivity/1",
            "model": str(job.args.artifact),
            "score": "delta_nll_zero_ablation",
            "higher_is_more_sensitive": True,
            "modules": modules,
            "block_influence": bi,
            "text": text,
        },
    )
    curves = [
        series(
            "module sensitivity (delta NLL, zero-ablation)",
            list(range(len(modules))),
            list(modules.values()),
            "module index (attn, mlp per layer)",
            "delta NLL (nats/token)",
        )
    ]
    metrics = same_n_per_task(metrics)
    job.write_record(
        job.record(
            suite="sensitivity",
            base_model=meta.get("base_model", ""),
            metrics=metrics,
            samples=write_samples(job, []),
            series=curves,
            config=cfg,
            task_hashes={},
        )
    )
    print_metrics(metrics)


COMMANDS = {
    "locate": run_locate,
    "probe": run_probe,
    "steer": run_steer,
    "improve": run_improve,
    "sensitivity": run_sensitivity,
}


def sensitivity_config(job: Job) -> dict:
    """``papers.mi_steer.sensitivity``, or the window count and length given on the command line
    (the NSDS workflow measures its source models on its own calibration windows)."""
    given = {"n_neutral": job.args.n_neutral, "neutral_len": job.args.neutral_len}
    if all(v is not None for v in given.values()):
        return given
    cfg = {**suite_config(job, "sensitivity")}
    cfg.update({k: v for k, v in given.items() if v is not None})
    return cfg


def run(job: Job) -> None:
    cmd = job.args.command
    if cmd == "sensitivity":
        if not job.args.sensitivity:
            raise ValueError("sensitivity: --sensitivity (the output JSON) is required")
        COMMANDS[cmd](job, sensitivity_config(job))
    else:
        COMMANDS[cmd](job, suite_config(job, cmd))


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["mi_steer"], out="the run record this suite writes")
    ap.add_argument("command", choices=sorted(COMMANDS))
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--sensitivity", default=None, help="sensitivity: output JSON {module: score}")
    ap.add_argument(
        "--text",
        default=None,
        help="sensitivity: neutral text (.txt or .jsonl) read with the artifact's tokenizer "
        "instead of the world's neutral_test.txt",
    )
    ap.add_argument(
        "--n-neutral",
        type=int,
        default=None,
        help="sensitivity: number of windows (default: papers.mi_steer.sensitivity.n_neutral)",
    )
    ap.add_argument(
        "--neutral-len",
        type=int,
        default=None,
        help="sensitivity: window length (default: papers.mi_steer.sensitivity.neutral_len)",
    )
    run_job(ap, run, argv, errors=(ValueError, IndexError, FileNotFoundError))


if __name__ == "__main__":
    main()
