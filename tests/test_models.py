import json
from pathlib import Path

import pytest

from claimbench.errors import ModelNotAvailableError
from claimbench.models import check_hub_available, resolve_pretrained


def test_hub_id_offline_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(
        ModelNotAvailableError, match="'meta-llama/Llama-3.1-8B' is not available locally"
    ) as err:
        check_hub_available("meta-llama/Llama-3.1-8B")
    assert "hf download meta-llama/Llama-3.1-8B" in str(err.value) and "kind: local" in str(
        err.value
    )


def test_missing_local_model_path(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "meta.json").write_text(json.dumps({"load": {"path": str(tmp_path / "nope")}}))
    with pytest.raises(ModelNotAvailableError, match="is not a local model folder"):
        resolve_pretrained(art)
    with pytest.raises(ModelNotAvailableError, match="no meta.json"):
        resolve_pretrained(tmp_path / "missing")


def test_build_hub_offline_cli_error(tmp_path):
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    scale = yaml.safe_load((root / "config/scales/tiny.yaml").read_text())
    scale["models"]["x"] = {"kind": "hub", "id": "org/not-cached"}
    scale_file = tmp_path / "tiny-hub.yaml"
    scale_file.write_text(yaml.safe_dump(scale))
    out = tmp_path / "art"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "methods.lm.build",
            "hub",
            "--scale",
            "tiny",
            "--scale-file",
            str(scale_file),
            "--paper",
            "base",
            "--variant",
            "x",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": ""},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "'org/not-cached' is not available locally" in proc.stderr
    assert not out.exists()
