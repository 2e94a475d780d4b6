# One writer for the DuckDB store, then the HTML leaderboards regenerated from it alone.


rule ingest:
    input:
        records=all_run_records,
        claims=sorted(
            str(p) for p in Path(workflow.basedir).glob("methods/*/claims.yaml")
        ),
        # published exports of other scales (claimbench publish): a new one re-ingests
        published=sorted(
            str(p) for p in Path("results/published").glob("*/manifest.json")
        ),
    output:
        db=DB,
    log:
        "logs/ingest.log",
    localrule: True
    params:
        z=SCALE["claims"]["z"],
        methods=methods_dir,
    shell:
        "python -m claimbench.cli ingest --runs results/runs --db {output.db} --methods {params.methods} "
        "--z {params.z} > {log} 2>&1"


rule report:
    input:
        db=DB,
        templates=sorted(
            str(p) for p in Path(workflow.basedir).glob("methods/*/report.html.j2")
        ),
    output:
        index=report(
            "reports/index.html",
            category="Leaderboard",
            caption="../report/leaderboard.rst",
        ),
        pages=report(
            expand("reports/{paper}.html", paper=PAPERS),
            category="Papers",
            caption="../report/leaderboard.rst",
        ),
    log:
        "logs/report.log",
    localrule: True
    params:
        methods=lambda w: os.path.join(workflow.basedir, "methods"),
    shell:
        "python -m claimbench.cli report --db {input.db} --out reports "
        "--methods {params.methods} > {log} 2>&1"
