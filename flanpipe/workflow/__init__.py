"""The workflow side of the package: what the Snakemake rules and the CLI share (the DAG planner and
which rule takes which config slice). It sits above the stages and the core and is imported by
``rules/common.smk`` and :mod:`flanpipe.cli`."""
