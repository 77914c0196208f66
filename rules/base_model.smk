# Stage 6a, base_model: the untuned model (the pretrained checkpoint, or a new model of the run's
# architecture from the run's seed), evaluated beside the tuned ones.
# Code: workflow_scripts/base_model.py -> flanpipe/stages/base_model.py
from flanpipe.core.versions import STAGE_VERSIONS

BASE_MODEL_VERSION = STAGE_VERSIONS["base_model"]


rule base_model:
    input:
        tokenizer=get_base_tokenizer,
    output:
        hf=directory("models/base/hf"),
    log:
        "logs/train/base.log",
    benchmark:
        "benchmarks/train/base.tsv"
    conda:
        "../envs/flanpipe.yaml"
    params:
        config=PLAN.slice("base_model"),
        stage_version=BASE_MODEL_VERSION,
    script:
        "../workflow_scripts/base_model.py"
