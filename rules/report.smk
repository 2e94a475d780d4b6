# One writer for the DuckDB store, then the HTML leaderboards regenerated from it alone.


rule ingest:
    input:
        records=all_run_records,
        claims=sorted(
            str(p) for p in Path(workflow.basedir).glob("methods/*/claims.yaml")
        ),
    output:
        db=DB,
    log:
        "logs/ingest.log",
    localrule: True
    params:
        z=SCALE.get("claims", {}).get("z", 1.96),
        methods=methods_dir,
    shell:
        "python -m claimbench.cli ingest --runs results/runs --db {output.db} --methods {params.methods} "
        "--z {params.z} > {log} 2>&1"


rule report:
    input:
        db=DB,
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
    shell:
        "python -m claimbench.cli report --db {input.db} --out reports > {log} 2>&1"
