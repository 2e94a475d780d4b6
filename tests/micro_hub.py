"""A Hugging Face hub cache on disk, filled offline, and a base artifact that names a hub id.

The paper scale's base artifacts of kind ``hub`` hold only a ``meta.json`` whose
``load.hub_id`` names a model in the local cache (methods/lm/build.py). Tests stand a micro model
into that cache in huggingface_hub's own layout (``models--<org>--<name>/snapshots/<commit>/``
and ``refs/main``; huggingface_hub ``file_download.py``), so the real resolution code path
(``snapshot_download(local_files_only=True)``) runs without a network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, model_folder: Path) -> Path:
    """Copy a saved model folder into ``cache`` as ``repo_id`` at revision ``main``."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    for f in Path(model_folder).iterdir():
        if f.is_file() and f.name != "meta.json":
            shutil.copy2(f, snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def hub_artifact(folder: Path, repo_id: str) -> Path:
    """A base artifact of kind hub: only ``meta.json`` (as ``methods.lm.build`` writes it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"name": folder.name, "kind": "hub", "method": "base", "base_model": folder.name}
    meta["load"] = {"hub_id": repo_id, "revision": None}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def use_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache`` (read at call time) and keep it offline."""
    import huggingface_hub.constants as C

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
