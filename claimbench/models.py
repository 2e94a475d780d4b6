"""Resolve what an artifact's ``meta.json`` says to load: a local folder or a cached hub id.

Suites call :func:`resolve_pretrained` (an artifact) or :func:`loadable_source` (an artifact or a
plain model folder) and hand the result to ``from_pretrained`` / lm-eval.
A hub id is only ever read from the local cache (``HF_HUB_OFFLINE=1``); when it is not there
the error says how to provide it instead of hanging on the network.
"""

from __future__ import annotations

import json
from pathlib import Path

from claimbench.errors import ModelNotAvailableError


def check_hub_available(model_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFound...
        raise ModelNotAvailableError(
            f"model {model_id!r} is not available locally (offline mode: nothing is downloaded "
            f"at run time). Provide it by downloading it into the Hugging Face cache on a machine "
            f"with network access (`hf download {model_id}`, with HF_HOME on storage the compute "
            f"nodes share), or set the model to `kind: local` with `path:` pointing at a folder "
            f"saved with save_pretrained. ({type(e).__name__})"
        ) from e


def read_meta(artifact: str | Path) -> dict:
    artifact = Path(artifact)
    meta = artifact / "meta.json" if artifact.is_dir() else artifact
    if not meta.is_file():
        raise ModelNotAvailableError(f"{meta}: artifact has no meta.json (was it built?)")
    return json.loads(meta.read_text(encoding="utf-8"))


def resolve_pretrained(artifact: str | Path) -> str:
    """Path (or cached snapshot path) that ``from_pretrained`` should load for this artifact."""
    artifact = Path(artifact)
    folder = artifact if artifact.is_dir() else artifact.parent
    load = read_meta(artifact).get("load", {})
    if load.get("hub_id"):
        return str(check_hub_available(load["hub_id"], load.get("revision")))
    if load.get("path"):
        path = Path(load["path"])
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(
                f"{folder / 'meta.json'}: load.path {str(path)!r} is not a local model folder "
                f"(no config.json there)"
            )
        return str(path)
    if not (folder / "config.json").is_file():
        raise ModelNotAvailableError(f"{folder}: no config.json; the artifact is incomplete")
    return str(folder)


def loadable_source(path: str | Path) -> str:
    """The local folder ``from_pretrained`` loads for ``path``: a folder holding a saved model
    (``config.json``: itself), else an artifact whose ``meta.json`` names what to load (a cached
    hub id or a local path: see :func:`resolve_pretrained`)."""
    p = Path(path)
    folder = p.parent if p.name == "meta.json" else p
    if (folder / "config.json").is_file():
        return str(folder)
    if (folder / "meta.json").is_file():
        return resolve_pretrained(folder)
    raise ModelNotAvailableError(
        f"{folder}: neither an artifact (no meta.json) nor a model folder (no config.json)"
    )
