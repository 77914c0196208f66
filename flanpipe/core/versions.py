"""Every stage's version, in one module that imports nothing: the rules read them when Snakemake
parses the workflow (each version is a rule's ``params``, so a bump reruns the rule's jobs), which
would otherwise import every stage and with them torch, transformers and DeepSpeed, seconds on each
Snakemake start (every job's, on a cluster). Each stage's ``STAGE_VERSION`` is its entry here; bump
it when the stage's outputs change.
"""

STAGE_VERSIONS: dict[str, str] = {
    "base_model": "3",  # the train stage's version when the base model moved here
    "catalog": "2",  # 2: template_banks; collection_mix (rows by submixture, task, prompt type, source)
    "decontaminate": "2",
    "dedupe": "3",
    "download": "3",
    "evaluate": "5",
    "fingerprint": "3",  # 3: fingerprints the pool file (data/pool), batch by batch
    "mix": "5",  # 5: submixtures; prompt types counted (4: rows with duplicated source ids)
    "pack": "5",
    "pool": "1",
    "templatize": "5",  # 5: the template mix (prompt_type, shots columns; few-shot train rows)
    "tokenizer": "1",
    "train": "8",
}
