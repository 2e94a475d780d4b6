# claimbench: configs -> artifacts -> run records -> DuckDB store -> HTML leaderboards.
# Thin on purpose: helpers live in rules/common.smk, logic in claimbench/, methods/, benchmarks/.
import os

from snakemake.utils import min_version

min_version("9.19")


# Resolved beside this Snakefile, so `--directory <elsewhere>` works too.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    paper=r"[a-z][a-z0-9_]*",
    variant=r"[A-Za-z0-9][A-Za-z0-9_.\-]*",


include: "rules/data.smk"
include: "rules/base.smk"


for _paper_rules in PAPER_RULE_FILES:

    include: _paper_rules


# After the papers: it adds the perplexity records to theirs (RUN_RECORDS).
include: "rules/eval.smk"
include: "rules/report.smk"


rule reproduce_all:
    default_target: True
    input:
        db=DB,
        index="reports/index.html",
        pages=expand("reports/{paper}.html", paper=PAPERS),
    localrule: True
