# Stage 6c, report: results/report/index.md with PNG figures, from every eval result and the catalog.
# Code: workflow_scripts/report.py -> flanpipe/stages/report.py


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
        config=PLAN.slice("report"),
    script:
        "../workflow_scripts/report.py"
