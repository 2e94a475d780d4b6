"""Backends behind one interface: ``generate(prompt, max_new_tokens) -> str`` (README "Backends").

* ``rule``: deterministic symbolic baseline that answers from the JSON data block of the prompt,
  with a ``fault_rate`` knob that gives wrong answers on purpose (tests of the reflexive loop).
  It validates the pipeline; it is NOT evidence that a frozen LLM reasons physically.
* ``hf``: a local transformers causal LM folder (``local_files_only``, no remote code), greedy; it
  loads in ``dtype`` on ``device`` (``methods.omniflow.run`` passes the job's unless the backend's
  config sets its own) and every tensor it makes is on that device.
* ``openai``: an OpenAI-compatible ``/v1/chat/completions`` server (e.g. vLLM) over plain HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

BACKENDS: dict[str, type] = {}


class BackendError(RuntimeError):
    """A backend that cannot be used at all (missing folder, unreachable server)."""


def register(name: str):
    def deco(cls):
        BACKENDS[name] = cls
        cls.name = name
        return cls

    return deco


def make_backend(spec: dict):
    """Build a backend from a config mapping ``{"kind": "rule"|"hf"|"openai", ...}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    spec.pop("label", None)  # a display name for records and the report
    if kind not in BACKENDS:
        raise BackendError(f"backend kind {kind!r} is not one of {sorted(BACKENDS)}")
    return BACKENDS[kind](**spec)


class Backend:
    name = "base"

    def generate(self, prompt: str, max_new_tokens: int = 256) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.name}

    def weights_hash(self) -> str | None:
        return None


# ------------------------------------------------------------------ prompt sections


def section(prompt: str, name: str) -> str | None:
    """Text of a ``### name:`` section (up to the next ``###`` header)."""
    m = re.search(rf"^### {re.escape(name)}:(.*?)(?=^### |\Z)", prompt, flags=re.S | re.M)
    return m.group(1).strip() if m else None


# ------------------------------------------------------------------ rule backend

FAULTS = ("wrong_value", "invalid_json", "unknown_constraint")


@register("rule")
class RuleBackend(Backend):
    """Answers from the descriptor JSON block (or, without one, from the raw table it re-analyses)."""

    def __init__(
        self,
        fault_rate: float = 0.0,
        heed_feedback: float = 1.0,
        seed: int = 0,
        faults: list | None = None,
    ):
        self.fault_rate = float(fault_rate)
        self.heed_feedback = float(heed_feedback)
        self.seed = int(seed)
        self.faults = tuple(faults or FAULTS)
        for f in self.faults:
            if f not in FAULTS:
                raise BackendError(f"rule backend: unknown fault {f!r}; known: {', '.join(FAULTS)}")

    def describe(self) -> dict:
        return {
            "kind": "rule",
            "fault_rate": self.fault_rate,
            "heed_feedback": self.heed_feedback,
            "seed": self.seed,
        }

    def _rng(self, prompt: str) -> random.Random:
        h = hashlib.sha256(f"{self.seed}\n{prompt}".encode()).hexdigest()
        return random.Random(int(h[:16], 16))

    def generate(self, prompt: str, max_new_tokens: int = 256) -> str:
        rng = self._rng(prompt)
        step = section(prompt, "step") or "answer"
        data = _json_or_none(section(prompt, "data"))
        if data is None:
            data = _from_raw_table(section(prompt, "raw"))
        feedback = section(prompt, "feedback")
        p_fault = self.fault_rate if not feedback else self.fault_rate * (1.0 - self.heed_feedback)
        if step == "regime":
            return json.dumps({"regime": _rule_regime(section(prompt, "task") or "", data)})
        answer = _rule_answer(section(prompt, "task") or "", data, feedback)
        used = [
            ln[1 : ln.index("]")]
            for ln in (section(prompt, "constraints") or "").splitlines()
            if ln.startswith("[")
        ]
        if rng.random() < p_fault:
            fault = self.faults[rng.randrange(len(self.faults))]
            if fault == "invalid_json":
                return "The answer is " + str(answer)[:40] + " (no JSON here)"
            if fault == "unknown_constraint":
                return json.dumps(
                    {"answer": answer, "constraints_checked": used + ["entropy_increase"]}
                )
            answer = _corrupt(answer, rng)
        return json.dumps(
            {
                "answer": answer,
                "constraints_checked": used,
                "steps": ["read descriptors", "apply constraints"],
            }
        )


def _json_or_none(text: str | None):
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _from_raw_table(text: str | None) -> dict:
    """Raw-number ablation: rebuild the coarse field from the table and analyse what it can."""
    if not text:
        return {}
    rows = []
    for ln in text.splitlines():
        try:
            rows.append([float(x) for x in ln.split()])
        except ValueError:
            continue
    rows = [r for r in rows if r]
    if len(rows) < 8 or len({len(r) for r in rows}) != 1:
        return {}
    from methods.omniflow import descriptors as Dm  # local import: only this ablation needs it

    a = np.array(rows)
    try:
        D = Dm.describe_vorticity(np.kron(a, np.ones((4, 4))), Dm.DescriptorConfig(min_area=4))
    except ValueError:
        return {}
    return Dm.compact(D)


def _rule_answer(task: str, d: dict, feedback: str | None):
    """The symbolic answer to each question kind from the descriptor block."""
    if task == "divergence_free":
        return "yes" if d.get("incompressible", True) else "no"
    if task == "vortex_count":
        return int(d.get("n_vortices", 0))
    if task == "vortex_rotation":
        v = d.get("vortices") or [{"sign": 1}]
        return "ccw" if v[0]["sign"] > 0 else "cw"
    if task == "saddle_count":
        return int((d.get("critical_points") or {}).get("saddle", 0))
    if task == "energy_trend":
        return "up" if d.get("budget_dE_dt", d.get("dE_dt", -1.0)) > 0 else "down"
    if task == "enstrophy_trend":
        return "up" if d.get("budget_dZ_dt", d.get("dZ_dt", -1.0)) > 0 else "down"
    if task == "mass_conserved":
        return "yes" if abs(d.get("mass_drift", 0.0)) < d.get("mass_tol", 1e-6) else "no"
    if task == "equation":
        res = d.get("equation_residuals")
        if not res:
            return "unknown"
        from methods.omniflow.constraints import pick_equation

        return pick_equation({k: float(v) for k, v in res.items()})
    if task == "forecast":
        fits = [f for f in [d.get("fit")] + list(d.get("exemplar_fits") or []) if f]
        if not fits:  # nothing to fit (raw-number prompt): an inviscid, unforced program
            return {"pde": "ns2d_vorticity", "nu": 0.0, "drag": 0.0, "beta": 0.0, "forcing": {}}
        from methods.omniflow.physics import combine_fits

        return combine_fits(fits)
    return "unknown"


def _rule_regime(task: str, d: dict) -> str:
    fit = d.get("fit") or (d.get("exemplar_fits") or [None])[0]
    if fit:
        if abs(fit.get("beta", 0.0)) > 0.5:
            return "beta_plane"
        if max((abs(v) for v in fit.get("forcing", {}).values()), default=0.0) < 1e-2:
            return "ns2d_decaying"
        return "ns2d_forced"
    res = d.get("equation_residuals")
    if res:
        from methods.omniflow.constraints import pick_equation

        eq = pick_equation({k: float(v) for k, v in res.items()})
        return {"ns2d": "ns2d_forced"}.get(eq, eq)
    return "ns2d_forced"


def _corrupt(answer, rng: random.Random):
    swaps = {"yes": "no", "no": "yes", "up": "down", "down": "up", "cw": "ccw", "ccw": "cw"}
    if isinstance(answer, str) and answer in swaps:
        return swaps[answer]
    if isinstance(answer, bool):
        return not answer
    if isinstance(answer, int):
        return answer + rng.choice([-2, -1, 1, 2, 3])
    if isinstance(answer, dict):  # a physics program: wrong viscosity and forcing sign
        bad = dict(answer)
        bad["nu"] = float(bad.get("nu", 1e-3)) * 30 + 1e-2
        bad["forcing"] = {k: -v for k, v in (bad.get("forcing") or {}).items()}
        return bad
    if isinstance(answer, str):
        return {
            "heat": "burgers",
            "burgers": "heat",
            "ns2d": "beta_plane",
            "beta_plane": "ns2d",
        }.get(answer, "heat")
    return answer


# ------------------------------------------------------------------ transformers backend


def _hash_folder(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.glob("*.safetensors")):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@register("hf")
class HFBackend(Backend):
    """Local causal LM, greedy decoding; prompts longer than the context keep their tail."""

    def __init__(
        self,
        path: str,
        dtype: str = "float32",
        device: str = "cpu",
        chat_template: bool = False,
        label: str | None = None,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from claimbench.errors import ModelNotAvailableError
        from claimbench.models import loadable_source

        try:  # an artifact whose meta.json names a cached hub id, or a saved model folder
            src = Path(loadable_source(path))
        except ModelNotAvailableError as e:
            raise BackendError(f"hf backend: {path} is not a local model folder ({e})") from e
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.device, self.chat_template, self.label = src, device, chat_template, label
        self.tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(src), local_files_only=True, dtype=getattr(torch, dtype), trust_remote_code=False
        ).to(device)
        self.model.eval()
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._torch = torch

    def describe(self) -> dict:
        return {"kind": "hf", "path": str(self.path), "max_len": self.max_len}

    def weights_hash(self) -> str:
        return _hash_folder(self.path)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of the prompt, through the chat template when the backend uses one.

        ``apply_chat_template`` returns a ``BatchEncoding`` in transformers 5 (iterating it
        yields its keys), a list in 4.x: ask for the dict form and take ``input_ids``.
        """
        if self.chat_template and getattr(self.tok, "chat_template", None):
            enc = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )
            ids = enc["input_ids"]
        else:
            ids = self.tok(prompt)["input_ids"]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if ids and isinstance(ids[0], list):  # a batch of one
            ids = ids[0]
        if not all(isinstance(i, int) for i in ids):
            raise BackendError(f"hf backend {self.path}: prompt encoded to non-ids {ids[:3]!r}")
        return ids

    def generate(self, prompt: str, max_new_tokens: int = 256) -> str:
        torch = self._torch
        ids = self.encode(prompt)
        max_new = max(1, min(max_new_tokens, self.max_len // 2))
        ids = ids[-(self.max_len - max_new) :]
        x = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            out = self.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=self.tok.pad_token_id
                if self.tok.pad_token_id is not None
                else self.tok.eos_token_id,
            )
        return self.tok.decode(out[0, x.shape[1] :], skip_special_tokens=True)


# ------------------------------------------------------------------ OpenAI-compatible HTTP backend


@register("openai")
class OpenAIBackend(Backend):
    """POST {base_url}/chat/completions with temperature 0; the API key is read from an env var.

    ``base_url_file``: read the URL from the file a workflow-managed server writes once ready
    (``methods.omniflow.serve``) and wait for the server first. ``images``: send the item's field
    rendered as a PNG (``render.py``) as an image content part of the user message.
    """

    image_input = False

    def __init__(
        self,
        base_url: str | None = None,
        model: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        base_url_file: str | None = None,
        images: bool = False,
        server_wait_s: float = 3600.0,
        serve: dict | None = None,  # the server job's settings (methods.omniflow.serve)
    ):
        if base_url_file:
            from methods.omniflow.serve import ServerError, wait_for_url_file

            try:
                base_url = wait_for_url_file(base_url_file, server_wait_s, model=model)
            except ServerError as e:
                raise BackendError(f"openai backend: {e}") from e
        if not base_url:
            raise BackendError("openai backend: neither base_url nor a server URL file is given")
        self.base_url, self.model, self.timeout_s = base_url.rstrip("/"), model, float(timeout_s)
        self.api_key = os.environ.get(api_key_env, "")
        self.image_input = bool(images)
        self._images: list[bytes] = []

    def describe(self) -> dict:
        return {
            "kind": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "images": self.image_input,
        }

    def set_images(self, images: list[bytes]) -> None:
        """PNG images sent with every prompt until the next call (one item's fields)."""
        self._images = list(images)

    def request_body(self, prompt: str, max_new_tokens: int) -> dict:
        """The chat-completions request: text, plus each image as an ``image_url`` data URL."""
        content: str | list = prompt
        if self.image_input and self._images:
            from methods.omniflow.render import data_url

            content = [{"type": "text", "text": prompt}] + [
                {"type": "image_url", "image_url": {"url": data_url(png)}} for png in self._images
            ]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": max_new_tokens,
        }

    def generate(self, prompt: str, max_new_tokens: int = 256) -> str:
        body = json.dumps(self.request_body(prompt, max_new_tokens)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=body, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                obj = json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            raise BackendError(f"openai backend {self.base_url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise BackendError(f"openai backend {self.base_url} is unreachable ({e})") from e
        try:
            return obj["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(
                f"openai backend {self.base_url}: unexpected response {str(obj)[:200]}"
            ) from e
