# Stage 4, tokenize and pack: one SentencePiece model (trained on the `all` mixture, or given), or a
# pretrained checkpoint's own tokenizer read in place (get_tokenizer), then each mixture tokenized
# and packed into fixed-width token shards.
from flanpipe.pack import STAGE_VERSION as PACK_VERSION
from flanpipe.tokenizer import STAGE_VERSION as TOKENIZER_VERSION


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
        tokenizer=CFG.tokenize.tokenizer.model_dump(),
        mixture="all",
        seed=CFG.seed,
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
        tokenizer=CFG.tokenize.tokenizer.model_dump(),
        mixture=get_mixture_name,
        seed=CFG.seed,
        stage_version=TOKENIZER_VERSION,


rule pack:
    input:
        shards="data/mixtures/{mixture}/shards",
        mixture_manifest="data/mixtures/{mixture}/manifest.json",
        tokenizer=get_tokenizer,
    output:
        shards=directory("data/packed/{mixture}/shards"),
        index="data/packed/{mixture}/index.parquet",
        stats="data/packed/{mixture}/stats.parquet",
        packing="data/packed/{mixture}/packing.parquet",
        manifest="data/packed/{mixture}/manifest.json",
    log:
        "logs/pack/{mixture}.log",
    benchmark:
        "benchmarks/pack/{mixture}.tsv"
    conda:
        "../envs/flanpipe.yaml"
    threads: 8
    params:
        config=CFG.model_dump(
            include={
                "seed": True,
                "tokenize": True,
                "train": {"steps", "tokens_per_batch"},
            },
            exclude={"tokenize": {"tokenizer"}},
        ),
        stage_version=PACK_VERSION,
    script:
        "../workflow_scripts/pack.py"
