# Shared quantization layer (methods/quant): rules other papers (NSDS, D2Quant) build on.
# A planted-outlier copy of a model, named by its settings:
#   artifacts/<scale>/quant/<model>-plant-L<l1_l2..>-a<alpha>-c<channels>/meta.json


include: "quant_helpers.smk"


rule quant_plant:
    input:
        base=f"{ART}/base/{{name}}/meta.json",
    output:
        meta=f"{ART}/quant/{{name}}-plant-L{{layers}}-a{{alpha}}-c{{channels}}/meta.json",
    log:
        f"{LOGS}/quant/{{name}}-plant-L{{layers}}-a{{alpha}}-c{{channels}}.log",
    wildcard_constraints:
        name=one_of(sorted(MODELS)),
        layers=r"[0-9]+(_[0-9]+)*",
        alpha=r"[0-9]+(\.[0-9]+)?",
        channels=r"[0-9]+",
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        job=job("quant", "{name}-plant-L{layers}-a{alpha}-c{channels}"),
        base=lambda w, input: os.path.dirname(input.base),
        layers=lambda w: w.layers.replace("_", ","),
    shell:
        "python -m methods.quant.plant {params.job} --model {params.base} "
        "--layers {params.layers} --alpha {wildcards.alpha} --channels {wildcards.channels} "
        "> {log} 2>&1"
