# The report: results/report/index.md with PNG figures, from every eval result and the catalog.


rule report:
    input:
        unpack(get_report_inputs),
    output:
        "results/report/index.md",
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        clusters=CFG.ablations.clusters,
        formats=CFG.ablations.formats,
    script:
        "../workflow_scripts/report.py"
