"""One RL run of the noisy-rewards paper from a start artifact:
``python -m methods.noisy_rewards.train <job options> --start A --train T --valid V --record R
--algo ppo|grpo --reward correct|rpr|rm|shuffled [--flip-p P] [--rm-accuracy A] [--calibrate]
[--steps-factor K]``.

The RL settings are the scale's ``papers.noisy_rewards.rl`` (``job.config``; ``--algo`` names
the arm's algorithm; ``--steps-factor`` multiplies its steps, the long arms), the reward's the
arm's options with the scale's ``rpr`` and ``rm`` sections. Writes a ``save_pretrained`` folder
holding the **checkpoint selected on validation** (the greedy evaluation with the highest
accuracy, the earliest on ties; step 0 = the start policy), which the lm-eval rule scores on
the test split: the unbiased reading of the paper's "peak" (README.md, "Evaluation"); its
``train_log.jsonl``, a ``train`` run record (peak = selected / final greedy validation accuracy,
length, truncation, training reward, with the curves as ``series``) and ``meta.json`` last.
"""

from __future__ import annotations

from pathlib import Path

from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.noisy_rewards.ppo import train_rl
from methods.noisy_rewards.rewards import RewardFunction
from methods.posttrain.cli import rows_hash, save_artifact, set_problems
from methods.posttrain.engine import (
    drop_checkpoints,
    is_main_process,
    job_engine_kwargs,
    save_pretrained,
)
from methods.posttrain.models import load_model, read_meta
from methods.posttrain.rewards import load_problems


def select(evals: list[dict]) -> int:
    """Index of the validation-selected evaluation: highest accuracy, the earliest on ties."""
    acc = [e["accuracy"] for e in evals]
    return max(range(len(acc)), key=lambda i: (acc[i], -i))


class BestCheckpoint:
    """The ``log`` callback of ``train_rl``: keeps a copy of the weights at the best greedy
    validation accuracy so far (strictly better only, so the earliest of equals), and the start
    weights (evaluation step 0, which ``train_rl`` evaluates before its first log row)."""

    def __init__(self, model):
        self.model = model
        self.start = self._copy()
        self.best, self.best_step, self.best_acc = None, None, None

    def _copy(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def __call__(self, row: dict) -> None:
        acc = row.get("eval_accuracy")
        if acc is not None and (self.best_acc is None or acc > self.best_acc):
            self.best, self.best_step, self.best_acc = self._copy(), row["step"], acc

    def restore(self, evals: list[dict]) -> int:
        """Load the selected weights into the model (``select`` over ``evals``); its step."""
        step = evals[select(evals)]["step"]
        weights = self.start if step == 0 else self.best
        if step != 0 and step != self.best_step:
            raise RuntimeError(f"selected step {step} but the kept checkpoint is {self.best_step}")
        self.model.load_state_dict(weights)
        return step


def summarise(rows: list[dict], evals: list[dict], n_valid: int) -> list[dict]:
    acc = [e["accuracy"] for e in evals]
    peak = select(evals)
    last = rows[-max(1, len(rows) // 10) :]
    fin = evals[-1]
    return [
        metric("valid", "start_accuracy", acc[0], n=n_valid),
        metric("valid", "peak_accuracy", acc[peak], n=n_valid),
        metric("valid", "peak_step", evals[peak]["step"], higher_is_better=False),
        metric("valid", "final_accuracy", fin["accuracy"], n=n_valid),
        metric("valid", "final_length", fin["length"], higher_is_better=False),
        metric("valid", "final_truncation_rate", fin["truncation_rate"], higher_is_better=False),
        metric(
            "valid",
            "max_truncation_rate",
            max(e["truncation_rate"] for e in evals),
            higher_is_better=False,
        ),
        metric("train", "reward_final", sum(r["reward"] for r in last) / len(last)),
        metric(
            "train",
            "format_failure_rate",
            sum(r["format_failure_rate"] for r in rows) / len(rows),
            higher_is_better=False,
        ),
    ]


def curves(rows: list[dict], evals: list[dict]) -> list[dict]:
    x, ex = [r["step"] for r in rows], [e["step"] for e in evals]
    return [
        series("greedy accuracy", ex, [e["accuracy"] for e in evals], "step", "exact match"),
        series("training reward", x, [r["reward"] for r in rows], "step", "mean reward"),
        series(
            "training accuracy (rollouts)",
            x,
            [r["train_accuracy"] for r in rows],
            "step",
            "exact match",
        ),
        series("response length (rollouts)", x, [r["length"] for r in rows], "step", "tokens"),
        series("greedy response length", ex, [e["length"] for e in evals], "step", "tokens"),
        series(
            "truncation rate (rollouts)",
            x,
            [r["truncation_rate"] for r in rows],
            "step",
            "fraction",
        ),
    ]


def reward_config(job: Job) -> dict:
    """The arm's reward (``methods.noisy_rewards.rewards.RewardFunction``'s config): its kind
    and options, with the scale's RPR settings (and the RM calibration's tau and alpha)."""
    args, rpr = job.args, job.config["rpr"]
    if args.reward == "shuffled":
        if args.flip_p is not None or args.rm_accuracy is not None or args.calibrate:
            raise ValueError("--reward shuffled (the null) takes no --flip-p / --rm-* options")
        return {"kind": "shuffled", "rpr": rpr}
    if args.reward != "correct" and args.flip_p is not None:
        raise ValueError(f"--flip-p applies to --reward correct only, not {args.reward}")
    if (args.reward == "rm") != (args.rm_accuracy is not None):
        raise ValueError("--rm-accuracy goes with --reward rm (and only with it)")
    if args.calibrate and args.reward != "rm":
        raise ValueError("--calibrate applies to --reward rm only")
    if args.reward == "correct":
        if args.flip_p is None:
            raise ValueError("--reward correct needs --flip-p (0 for clean rewards)")
        return {"kind": "correct", "flip_p": args.flip_p, "rpr": rpr}
    if args.reward == "rpr":
        return {"kind": "rpr", "rpr": rpr}
    rm = job.config["rm"]
    out = {
        "kind": "rm",
        "rm_accuracy": args.rm_accuracy,
        "calibrate": args.calibrate,
        "tau": rm["tau"],
        "alpha": rm["alpha"],
        "rpr": rpr,
    }
    if "variances" in rm:  # the paper's score variance of the RM of this accuracy
        accs = [float(a) for a in rm["accuracies"]]
        if float(args.rm_accuracy) not in accs:
            raise ValueError(
                f"papers.noisy_rewards.rm.variances: no variance for --rm-accuracy "
                f"{args.rm_accuracy} (rm.accuracies: {accs})"
            )
        out["rm_variance"] = float(rm["variances"][accs.index(float(args.rm_accuracy))])
    return out


def run(job: Job) -> None:
    args = job.args
    cfg, rcfg = dict(job.config["rl"], algo=args.algo), reward_config(job)
    if args.steps_factor != 1:
        if args.steps_factor < 1:
            raise ValueError(f"--steps-factor must be >= 1, got {args.steps_factor}")
        cfg["steps"] = int(cfg["steps"]) * args.steps_factor
    if cfg.get("answers", "arith") != "arith":  # the paper scale's \boxed{} answers
        rcfg = {**rcfg, "answers": cfg["answers"]}
    reward = RewardFunction(rcfg, seed=job.seed)  # bad p / empty phrases fail before loading
    model, tok = load_model(args.start, trainable=True, device=job.device, dtype=job.torch_dtype)
    model.requires_grad_(True)
    if cfg.get("dataset"):  # the paper scale: the paper's prompts through its prompt format
        fmt = cfg.get("prompt_format", "plain")
        train = set_problems(job, tok, cfg["dataset"], fmt)
        if not cfg.get("valid_dataset"):
            raise ValueError("papers.noisy_rewards.rl.dataset needs rl.valid_dataset")
        valid = set_problems(job, tok, cfg["valid_dataset"], fmt)[: cfg.get("eval_n")]
    else:
        train = load_problems(args.train, cfg.get("families"))
        valid = load_problems(args.valid, cfg.get("families"), cfg.get("eval_n"))
    keep = BestCheckpoint(model)
    # the paper scale's engine (accelerate; checkpoints and resume); {} at tiny and small. A
    # resumed run keeps the selected weights only if they come after the resume (else
    # BestCheckpoint.restore stops with the two steps named)
    run_meta: dict = {}
    ek = job_engine_kwargs(job, run_meta)
    rows, evals = train_rl(model, tok, train, valid, reward, cfg, seed=job.seed, log=keep, **ek)
    keep.restore(evals)  # the artifact is the validation-selected checkpoint
    if ek:
        save_pretrained(ek, model, tok, job.out)
        if not is_main_process(ek):
            return  # rank 0 writes the record and meta.json
        atomic_write_jsonl(Path(job.out) / "train_log.jsonl", rows)
    else:
        save_artifact(model, tok, job.out, rows)
    prov = job.provenance(job.wall_s)
    base_name = read_meta(args.start).get("name", Path(args.start).name)
    full = {"rl": cfg, "reward": rcfg, "checkpoint": "validation-selected"}
    rec = job.record(
        method=cfg["algo"],
        base_model=base_name,
        suite="train",
        tasks=["valid", "train"],
        config=full,
        metrics=summarise(rows, evals, len(valid)),
        provenance=prov,
        series=curves(rows, evals),
        task_hashes=(
            {"train": rows_hash(train)[:16], "valid": rows_hash(valid)[:16]}
            if cfg.get("dataset")
            else {"train": sha256_file(args.train)[:16], "valid": sha256_file(args.valid)[:16]}
        ),
    )
    job.write_record(rec, args.record)
    job.write_meta(
        method=cfg["algo"],
        base_model=base_name,
        inputs={args.train: sha256_file(args.train), args.start: base_name},
        config=full,
        provenance=prov,
        **run_meta,
    )
    drop_checkpoints(ek)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["noisy_rewards"])
    ap.add_argument("--start", required=True, help="the start policy's artifact folder")
    ap.add_argument("--train", required=True, help="training problems (JSONL)")
    ap.add_argument("--valid", required=True, help="validation problems (JSONL)")
    ap.add_argument("--record", required=True, help="the train run record to write")
    ap.add_argument("--algo", choices=["ppo", "grpo"], required=True, help="the arm's RL loop")
    ap.add_argument("--reward", choices=["correct", "rpr", "rm", "shuffled"], required=True)
    ap.add_argument("--flip-p", type=float, default=None, help="group flip probability p")
    ap.add_argument("--rm-accuracy", type=float, default=None, help="simulated RM accuracy")
    ap.add_argument("--calibrate", action="store_true", help="RPR calibration of the RM")
    ap.add_argument("--steps-factor", type=int, default=1, help="multiplies rl.steps")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
