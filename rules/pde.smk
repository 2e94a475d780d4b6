# PDE benchmark data (benchmarks/pde/README.md): ground-truth trajectories per regime and the
# verifiable question sets. Scoring rules live with the papers that produce predictions
# (e.g. rules/omniflow.smk calls `python -m benchmarks.pde.suite`); they use these names:
PDE = SCALE.get("benchmarks", {}).get("pde")
PDE_DATA = f"{DATA}/pde"
PDE_MANIFEST = f"{PDE_DATA}/manifest.json"
PDE_REGIMES = list(PDE["regimes"]) if PDE else []
PDE_SOURCE = PDE["source"] if PDE else None


if PDE:

    rule pde_data:
        output:
            manifest=PDE_MANIFEST,
        log:
            f"{LOGS}/pde/data.log",
        benchmark:
            f"{LOGS}/pde/data.benchmark.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            spec=json.dumps(PDE, sort_keys=True),
            seed=SCALE["seed"],
            out=output_dir,
        shell:
            "OMP_NUM_THREADS={threads} python -m benchmarks.pde.generate --spec {params.spec:q} "
            "--seed {params.seed} --out {params.out} > {log} 2>&1"
