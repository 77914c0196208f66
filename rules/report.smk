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
        # each ablation result's point (a cluster count, a format), in input order
        points={
            kind: [p for p, _, _ in PLAN.ablation_points(kind)]
            for kind in ("clusters", "format")
        },
    script:
        "../workflow_scripts/report.py"
