"""Load and validate the workflow config and the scale files, with errors that name the thing.

``config/config.yaml`` holds the defaults (``scale: tiny``, ``papers: all``); the scale file
``config/scales/<scale>.yaml`` holds the experiment matrix. Both are validated against JSON
Schemas in ``config/schema/`` before any job starts. A paper may add
``config/schema/papers/<paper>.schema.yaml`` to validate its own ``papers.<paper>`` section.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from claimbench.errors import ConfigError
from claimbench.records import SCALES

ROOT = Path(__file__).resolve().parent.parent
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
CONFIG_DIR = ROOT / "config"
SCHEMA_DIR = CONFIG_DIR / "schema"


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        # libyaml's safe loader where PyYAML was built with it: the same documents, ~10x faster
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where} ({problem})") from e


# Seeds every consumer accepts: numpy's legacy seeding needs 0 <= seed < 2**32, the jobs derive
# seeds by adding small offsets (``seed + 1``), and the store's ``runs.seed`` column is BIGINT;
# [0, 2**31) leaves the offsets room below numpy's bound and fits a signed 32-bit column too.
SEED_MAX = 2**31
_INT64 = 2**63
_SEED_KEY = re.compile(r"^(.*_)?seeds?$")


def _is_int(checker, value) -> bool:
    """JSON-schema ``integer`` as written in the file: an int, never a float such as ``1.0e+30``
    (jsonschema's own check accepts any float whose fractional part is zero)."""
    return isinstance(value, int) and not isinstance(value, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int),
)


def _format_error(where: str, err: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    return f"{where}: {key}: {err.message}"


def check_values(obj: Any, where: str, path: tuple = ()) -> None:
    """What JSON Schema cannot say: every number finite (``.nan`` / ``.inf`` compare false
    against any ``minimum``, so they pass a schema), every integer a 64-bit one, and every seed
    (a key ``seed`` / ``seeds`` / ``*_seed(s)``) an integer in [0, 2^31)."""
    key = ".".join(str(p) for p in path) or "<top level>"
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_values(v, where, (*path, k))
            if isinstance(k, str) and _SEED_KEY.match(k):
                for i, s in enumerate(v if isinstance(v, list) else [v]):
                    _check_seed(s, where, (*path, k, i) if isinstance(v, list) else (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_values(v, where, (*path, i))
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{where}: {key}: {obj}: not a finite number")
    elif isinstance(obj, int) and not isinstance(obj, bool) and not -_INT64 <= obj < _INT64:
        raise ConfigError(f"{where}: {key}: {obj}: does not fit a signed 64-bit integer")


def _check_seed(value: Any, where: str, path: tuple) -> None:
    key = ".".join(str(p) for p in path)
    # other types are the schema's to name (``seeds`` is also a claims check holding a mapping)
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < SEED_MAX:
        raise ConfigError(
            f"{where}: {key}: {value}: a seed must lie in [0, 2^31) (numpy seeds below 2^32, "
            "and jobs add offsets to it)"
        )


def validate(obj: Any, schema: dict, where: str) -> None:
    """Raise ConfigError with the first (most relevant) violation: of :func:`check_values`,
    then of the schema."""
    check_values(obj, where)
    err = first_error(obj, schema)
    if err is not None:
        raise ConfigError(_format_error(where, err))


def first_error(obj: Any, schema: dict) -> jsonschema.ValidationError | None:
    """The most relevant schema violation of ``obj`` (integers strict: see :func:`_is_int`)."""
    errors = sorted(
        _Validator(schema).iter_errors(obj), key=lambda e: (list(e.absolute_path), e.message)
    )
    return jsonschema.exceptions.best_match(errors) if errors else None


def _resolve(schema: dict, root: dict) -> dict:
    """Follow a local ``$ref`` (``#/$defs/name``) inside the same schema document."""
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ConfigError(f"schema: $ref {ref!r} is not a local reference")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        merged = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **merged}
    return schema


def fill_defaults(obj: Any, schema: dict, root: dict | None = None) -> Any:
    """Insert every ``default`` the schema declares for a missing key, recursively.

    Defaults live in the schemas only (``config/schema/``); code reads ``section[key]``. The walk
    follows ``properties``, ``additionalProperties``, ``items``, local ``$ref``s and the branches
    of ``allOf`` (``if``/``then`` included when the ``if`` holds); ``oneOf`` / ``anyOf`` are left
    alone (which branch applies is not the walker's to guess). ``obj`` is changed in place.
    """
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return obj
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            sub = _resolve(sub, root)
            if key not in obj and isinstance(sub, dict) and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                fill_defaults(obj[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj:
                if key not in props:
                    fill_defaults(obj[key], extra, root)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            fill_defaults(item, schema["items"], root)
    for branch in schema.get("allOf") or []:
        branch = _resolve(branch, root)
        if "if" in branch:
            cond = _resolve(branch["if"], root)
            if _Validator(cond).is_valid(obj):
                if "then" in branch:
                    fill_defaults(obj, branch["then"], root)
            elif "else" in branch:
                fill_defaults(obj, branch["else"], root)
        else:
            fill_defaults(obj, branch, root)
    return obj


def validate_with_defaults(obj: Any, schema: dict, where: str) -> Any:
    """Validate what the user wrote, fill the schema's defaults, validate the result again."""
    validate(obj, schema, where)
    fill_defaults(obj, schema)
    validate(obj, schema, where + " (with schema defaults)")
    return obj


def known_papers(root: Path = ROOT) -> dict[str, Path]:
    """Papers are discovered, not listed: every ``methods/*/claims.yaml`` names one paper.

    Each claims file is validated here (before any job starts), so a typo in one stops the
    workflow with one line naming the file and claim instead of failing the ingest later.
    """
    from claimbench.claims import load_claims_file

    papers: dict[str, Path] = {}
    for claims in sorted((root / "methods").glob("*/claims.yaml")):
        name = load_claims_file(claims, _display(claims))[0]["paper"]
        if name in papers:
            raise ConfigError(
                f"{_display(claims)}: paper: {name!r}: already claimed by "
                f"{_display(papers[name] / 'claims.yaml')} (one claims file per paper)"
            )
        papers[name] = claims.parent
    return papers


def resolve_papers(requested: Any, known: dict[str, Path], where: str) -> list[str]:
    """``all`` or a list / comma-separated string of paper names; 'base' is always included."""
    if requested in (None, "all"):
        names = list(known)
    else:
        if isinstance(requested, str):
            names = [p.strip() for p in requested.split(",") if p.strip()]
        elif isinstance(requested, list):
            names = [str(p) for p in requested]
        else:
            raise ConfigError(f"{where}: papers: {requested!r} must be 'all' or a list of names")
        for name in names:
            if name not in known:
                known_list = ", ".join(sorted(known))
                raise ConfigError(
                    f"{where}: papers: {name!r} is not a known paper (known: {known_list})"
                )
    if "base" in known:  # the base models come first, whatever the papers' names sort as
        names = ["base", *(n for n in names if n != "base")]
    return names


def load_scale(
    scale: str,
    scale_file: str | os.PathLike | None = None,
    papers: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Read and validate one scale file; ``scale_file`` overrides the default location.

    ``papers`` (a job's own paper) limits the per-paper validation to those sections: the
    workflow validated every section before any job started, and a job reads only its own.
    """
    if scale not in SCALES:
        raise ConfigError(f"config: scale: {scale!r} is not one of {list(SCALES)}")
    path = Path(scale_file) if scale_file else CONFIG_DIR / "scales" / f"{scale}.yaml"
    where = _display(path)
    data = read_yaml(path)
    schema = read_yaml(SCHEMA_DIR / "scale.schema.yaml")
    validate_with_defaults(data, schema, where)
    if data["scale"] != scale:
        raise ConfigError(
            f"{where}: scale: {data['scale']!r} does not match the requested scale {scale!r}"
        )
    for paper, section in (data.get("papers") or {}).items():
        if papers is not None and paper not in papers:
            continue
        paper_schema = SCHEMA_DIR / "papers" / f"{paper}.schema.yaml"
        if paper_schema.is_file():
            validate_with_defaults(section, read_yaml(paper_schema), f"{where}: papers.{paper}")
    for bench, section in (data.get("benchmarks") or {}).items():
        bench_schema = SCHEMA_DIR / "benchmarks" / f"{bench}.schema.yaml"
        if not bench_schema.is_file():
            raise ConfigError(f"{where}: benchmarks.{bench}: no schema {_display(bench_schema)}")
        validate_with_defaults(section, read_yaml(bench_schema), f"{where}: benchmarks.{bench}")
    _check_models(data, where)
    _check_model_references(data, where)
    return data


def _check_model_references(data: dict, where: str) -> None:
    """Every ``*_model`` key in a paper section, and every key of an ``extra_students`` map
    (G-OPD), must name a model of the scale's ``models``."""

    def bad(path, value):
        return ConfigError(
            f"{where}: {path}: {value!r} is not one of the scale's models "
            f"({', '.join(sorted(data['models']))})"
        )

    def walk(obj, path):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if (
                    key.endswith("_model")
                    and isinstance(value, str)
                    and value not in data["models"]
                ):
                    raise bad(f"{path}.{key}", value)
                if key == "extra_students" and isinstance(value, dict):
                    for name in value:
                        if name not in data["models"]:
                            raise bad(f"{path}.{key}", name)
                walk(value, f"{path}.{key}")

    for paper, section in (data.get("papers") or {}).items():
        walk(section, f"papers.{paper}")


def _check_models(data: dict, where: str) -> None:
    for name, spec in data.get("models", {}).items():
        if spec["kind"] == "local":
            path = Path(os.path.expandvars(os.path.expanduser(spec["path"])))
            if not (path / "config.json").is_file():
                raise ConfigError(
                    f"{where}: models.{name}.path: {spec['path']!r} is not a local model folder "
                    f"(no config.json there); point it at a folder saved with save_pretrained"
                )


def load_workflow_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate Snakemake's ``config`` dict (config.yaml + --config overrides)."""
    validate(
        config, read_yaml(SCHEMA_DIR / "config.schema.yaml"), "config/config.yaml (+ --config)"
    )
    scale = load_scale(config["scale"], config.get("scale_file"))
    known = known_papers()
    papers = resolve_papers(config.get("papers", "all"), known, "config/config.yaml (+ --config)")
    for paper in scale.get("papers") or {}:
        if paper not in known:
            scale_file = (
                config.get("scale_file") or CONFIG_DIR / "scales" / f"{config['scale']}.yaml"
            )
            raise ConfigError(
                f"{_display(scale_file)}: papers.{paper}: not a known paper "
                f"(known: {', '.join(sorted(known))})"
            )
    return {"scale": scale, "papers": papers}


def _display(path: str | os.PathLike) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
