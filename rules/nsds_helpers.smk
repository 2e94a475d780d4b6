# Functions of rules/nsds.smk (kept apart: `snakemake --lint` wants rules and functions in
# separate files). Included by rules/nsds.smk before its rules.


def nsds_budget_name(b):
    return f"{float(b):g}"


def nsds_check_sources():
    """Cross-references the schema cannot check: every source named is defined."""
    where = f"config/scales/{SCALE_NAME}.yaml: papers.nsds"
    for key in ("study_sources", "artifact_sources", "eval_sources"):
        for src in NSDS[key]:
            if src not in NSDS_SOURCES:
                raise WorkflowError(
                    f"{where}.{key}: {src!r} is not a source (sources: {sorted(NSDS_SOURCES)})"
                )
    for src in NSDS["eval_sources"]:
        if "base_model" in NSDS_SOURCES[src]:
            raise WorkflowError(
                f"{where}.eval_sources: {src!r} is a base model (evaluated by base_all)"
            )
    draws = NSDS.get("random_draws") or {}
    for b in draws.get("budgets", []):
        if float(b) not in {float(x) for x in NSDS["budgets"]}:
            raise WorkflowError(
                f"{where}.random_draws.budgets: {b} is not one of budgets {NSDS['budgets']}"
            )
    if draws.get("n", 1) > 1 and "random" not in NSDS["methods"]:
        raise WorkflowError(
            f"{where}.random_draws.n: {draws['n']} draws of method random, which methods lacks"
        )
    for src in NSDS_PLANTED:
        if NSDS_SOURCES[src]["plant"]["from"] not in NSDS_SOURCES:
            raise WorkflowError(
                f"{where}.sources.{src}.plant.from: {NSDS_SOURCES[src]['plant']['from']!r} is not a source"
            )
        if NSDS_SOURCES[src]["plant"]["from"] == src:
            raise WorkflowError(
                f"{where}.sources.{src}.plant.from: a source cannot plant into itself"
            )


def nsds_source_meta(src):
    spec = NSDS_SOURCES[src]
    if "base_model" in spec:
        return f"{ART}/base/{spec['base_model']}/meta.json"
    return f"{ART}/nsds/{src}/meta.json"
