# Stage 4a, tokenizer: one SentencePiece model, trained on the `all` mixture (or given). A
# pretrained checkpoint's own tokenizer is read in place instead (get_tokenizer): no job.
# Code: workflow_scripts/tokenizer.py -> flanpipe/stages/tokenizer.py
from flanpipe.core.versions import STAGE_VERSIONS

TOKENIZER_VERSION = STAGE_VERSIONS["tokenizer"]


rule tokenizer:
    input:
        unpack(get_tokenizer_source),
    output:
        model="models/tokenizer/spm.model",
        manifest="models/tokenizer/manifest.json",
    log:
        "logs/tokenizer/shared.log",
    benchmark:
        "benchmarks/tokenizer/shared.tsv"
    conda:
        "../envs/flanpipe.yaml"
    threads: 8
    params:
        config=PLAN.slice("tokenizer"),
        mixture="all",
        stage_version=TOKENIZER_VERSION,
    script:
        "../workflow_scripts/tokenizer.py"


# With tokenize.tokenizer.shared: false, each mixture trains its own tokenizer on its own text.
use rule tokenizer as tokenizer_per_mixture with:
    input:
        unpack(get_tokenizer_source),
    output:
        model="models/tokenizer/{mixture}/spm.model",
        manifest="models/tokenizer/{mixture}/manifest.json",
    log:
        "logs/tokenizer/{mixture}.log",
    benchmark:
        "benchmarks/tokenizer/{mixture}.tsv"
    params:
        config=PLAN.slice("tokenizer"),
        mixture=get_mixture_name,
        stage_version=TOKENIZER_VERSION,
