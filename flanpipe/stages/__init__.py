"""The stages: one module per Snakemake rule (``rules/<rule>.smk``, ``workflow_scripts/<rule>.py``).
Each reads its inputs, calls the core and writes its outputs and manifest; no stage imports another."""
