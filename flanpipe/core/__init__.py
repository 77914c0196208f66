"""The core: what several stages share, grouped by role, each group importing only those below it
(import-linter contracts in ``pyproject.toml``):

- :mod:`flanpipe.core.eval` and :mod:`flanpipe.core.train`: scoring and metrics; the optimizer,
  ranks and the launcher;
- :mod:`flanpipe.core.model`: the checkpoint seam, LoRA adapters, the packed causal and
  encoder-decoder models;
- :mod:`flanpipe.core.tokens`: tokenizers, chat templates, the training formats, bin packing, shards;
- :mod:`flanpipe.core.text`: schemas, row validation, templates, stable keys and seeded draws,
  hashing, few-shot exemplars;
- :mod:`flanpipe.core.config`: the typed config, the stages' slices and the dataset registry;
- :mod:`flanpipe.core.io` and :mod:`flanpipe.core.logs`: atomic writes, manifests, logging.

The core imports no stage, and nothing of the workflow: which rule takes which slice is the
workflow's (:mod:`flanpipe.workflow.planner`)."""
