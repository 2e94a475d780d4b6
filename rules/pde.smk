# PDE benchmark data (benchmarks/pde/README.md): ground-truth trajectories per regime and the
# verifiable question sets. Scoring rules live with the papers that produce predictions
# (e.g. rules/omniflow.smk calls `python -m benchmarks.pde.suite`); they use these names:
PDE = SCALE.get("benchmarks", {}).get("pde")
PDE_DATA = f"{DATA}/pde"
PDE_MANIFEST = f"{PDE_DATA}/manifest.json"
PDE_REGIMES = list(PDE["regimes"]) if PDE else []
PDE_SOURCE = PDE["source"] if PDE else None
PDE_SHIFTED = [r for r in PDE_REGIMES if r != PDE_SOURCE]


if PDE:

    rule pde_data:
        output:
            manifest=PDE_MANIFEST,
        log:
            f"{LOGS}/pde/data.log",
        benchmark:
            f"{LOGS}/pde/data.benchmark.tsv"
        threads: JOB_THREADS
        resources:
            mem_mb=8000 if SCALE_NAME == "paper" else 2000,
            runtime=600 if SCALE_NAME == "paper" else 30,
        params:
            job=job("omniflow", "pde"),
        shell:
            "OMP_NUM_THREADS={threads} python -m benchmarks.pde.generate {params.job} "
            "> {log} 2>&1"

    rule pde_reference:
        input:
            manifest=PDE_MANIFEST,
        output:
            preds=expand(
                f"{PDE_DATA}/reference/{{{{kind}}}}/{{regime}}.npz", regime=PDE_REGIMES
            ),
        log:
            f"{LOGS}/pde/reference.{{kind}}.log",
        wildcard_constraints:
            kind="truth|persistence|zero",
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            job=job("omniflow", "{kind}"),
            data=input_dir,
            regimes=",".join(PDE_REGIMES),
        shell:
            "python -m benchmarks.pde.suite reference {params.job} --data {params.data} "
            "--regimes {params.regimes} --kind {wildcards.kind} > {log} 2>&1"
