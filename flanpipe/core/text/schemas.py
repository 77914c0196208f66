"""Every artifact's Arrow schema, in the order the stages write them (one place to read a file's
columns; the stages and the catalog import them from here)."""

from __future__ import annotations

import pyarrow as pa

# data/templatized/{dataset}.parquet (templatize)
TEMPLATIZED_SCHEMA = pa.schema([
    pa.field("inputs", pa.string()),
    pa.field("targets", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("cluster", pa.string()),
    pa.field("split", pa.string()),
    pa.field("example_id", pa.string()),
    pa.field("row_index", pa.int64()),
    pa.field("template_id", pa.int32()),
    pa.field("inverted", pa.bool_()),
    pa.field("options", pa.list_(pa.string())),
    pa.field("answer_index", pa.int32()),
    pa.field("format", pa.string()),
    pa.field("pass", pa.int32()),  # which rendering of a train example (epoch e uses e % passes); 0 on eval
    pa.field("input_cut", pa.int32()),  # characters cut from the end of the long field to fit; 0 if none
    pa.field("prompt_type", pa.string()),  # zs_opt | zs_noopt | fs_opt | fs_noopt (templatize.mix)
    pa.field("shots", pa.int32()),  # solved exemplars before a few-shot input; 0 for zero-shot
])

# mix.py
FATE_SCHEMA = pa.schema([
    pa.field("dataset", pa.string()),
    pa.field("row_index", pa.int64()),
    pa.field("example_id", pa.string()),
    pa.field("fate", pa.string()),  # kept | exact | near | contaminated | capped
    pa.field("kept_dataset", pa.string()),  # a duplicate's kept twin in this mixture, else null
    pa.field("kept_row_index", pa.int64()),
    pa.field("kept_example_id", pa.string()),
])

# mix.py
CONTAMINATION_SCHEMA = pa.schema([
    pa.field("mixture", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("eval_dataset", pa.string()),
    pa.field("eval_cluster", pa.string()),
    pa.field("rows", pa.int64()),  # pool rows sharing an n-gram with this eval set
    pa.field("removed", pa.int64()),  # of those, the rows not already dropped as duplicates
])

# mix.py
MIXTURE_STATS_SCHEMA = pa.schema([
    pa.field("mixture", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("cluster", pa.string()),
    pa.field("submixture", pa.string()),  # the dataset's group in mix.submixtures
    pa.field("rows_raw", pa.int64()),
    pa.field("rejected", pa.int64()),
    pa.field("exact_dups", pa.int64()),
    pa.field("near_dups", pa.int64()),
    pa.field("contaminated", pa.int64()),
    pa.field("capped", pa.int64()),
    pa.field("kept", pa.int64()),
    pa.field("rate", pa.float64()),
    pa.field("sampled", pa.int64()),
    pa.field("epochs", pa.float64()),
    pa.field("mean_input_chars", pa.float64()),
    pa.field("mean_target_chars", pa.float64()),
    pa.field("mean_tokens_est", pa.float64()),
    pa.field("inputs_cut", pa.int64()),  # sampled rows whose long field templatize cut to fit
    # kept < cap although raw rows outside the pool exist: at most this many more rows would have
    # passed the cap with a larger pool (dedupe.pool_factor); 0 when the pool was large enough
    pa.field("pool_short", pa.int64()),
    # raw rows whose source id another row of the split also has (keyed apart by their content)
    pa.field("duplicate_id_rows", pa.int64()),
    # sampled rows per prompt type (templatize.mix)
    pa.field("zs_opt", pa.int64()),
    pa.field("zs_noopt", pa.int64()),
    pa.field("fs_opt", pa.int64()),
    pa.field("fs_noopt", pa.int64()),
])

# mix.py
MIXTURE_SCHEMA = TEMPLATIZED_SCHEMA.append(pa.field("epoch", pa.int32())).append(
    pa.field("submixture", pa.string()))  # the dataset's group in mix.submixtures

# decontaminate.py
NGRAM_SCHEMA = pa.schema([pa.field("hash", pa.uint64())])

# decontaminate.py
MATCH_SCHEMA = pa.schema([
    pa.field("row_index", pa.int64()),
    pa.field("example_id", pa.string()),
    pa.field("eval_dataset", pa.string()),
    pa.field("eval_cluster", pa.string()),
    pa.field("ngram", pa.int32()),
    pa.field("matches", pa.int32()),  # how many of the row's n-grams are in the eval set
])

# dedupe.py
def fingerprint_schema(num_perm: int) -> pa.Schema:
    return pa.schema([
        pa.field("row_index", pa.int64()),
        pa.field("example_id", pa.string()),
        pa.field("priority", pa.uint64()),
        pa.field("exact_hi", pa.uint64()),
        pa.field("exact_lo", pa.uint64()),
        pa.field("words", pa.int32()),
        pa.field("signature", pa.list_(pa.uint32(), num_perm)),  # all raw text fields
        pa.field("distinct_signature", pa.list_(pa.uint32(), num_perm)),  # the `distinct` fields
    ])

# dedupe.py
DROPPED_SCHEMA = pa.schema([
    pa.field("row_index", pa.int64()),
    pa.field("example_id", pa.string()),
    pa.field("reason", pa.string()),  # exact | near
    pa.field("kept_dataset", pa.string()),
    pa.field("kept_row_index", pa.int64()),
    pa.field("kept_example_id", pa.string()),
    pa.field("similarity", pa.float32()),  # 1 for exact; the estimated Jaccard for near
])

# pack.py
PACKING_SCHEMA = pa.schema([
    pa.field("mixture", pa.string()),
    pa.field("model_kind", pa.string()),
    pa.field("packer", pa.string()),
    pa.field("row_tokens", pa.int64()),  # slots per row (inputs + targets for encoder-decoder)
    pa.field("examples", pa.int64()),
    pa.field("rows", pa.int64()),
    pa.field("non_pad_tokens", pa.int64()),
    pa.field("target_tokens", pa.int64()),  # tokens the loss counts
    pa.field("efficiency", pa.float64()),  # non-pad tokens / all token slots
    pa.field("rows_lower_bound", pa.int64()),  # sum of windows' lower bounds
    pa.field("rows_over_lower_bound", pa.float64()),  # rows / rows_lower_bound - 1
    pa.field("rows_next_fit", pa.int64()),
    pa.field("efficiency_next_fit", pa.float64()),
    pa.field("efficiency_pad_to_max", pa.float64()),  # one example per row
    pa.field("truncated_inputs", pa.int64()),
    pa.field("truncated_targets", pa.int64()),
    pa.field("budget_tokens", pa.int64()),  # train.steps * train.tokens_per_batch
    pa.field("windows", pa.int64()),
])

# pack.py
PACKED_STATS_SCHEMA = pa.schema([
    pa.field("mixture", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("examples", pa.int64()),
    pa.field("input_tokens", pa.int64()),
    pa.field("target_tokens", pa.int64()),
    pa.field("mean_input_tokens_full", pa.float64()),
    pa.field("mean_target_tokens_full", pa.float64()),
    pa.field("max_input_tokens_full", pa.int64()),
    pa.field("max_target_tokens_full", pa.int64()),
    pa.field("truncated_inputs", pa.int64()),
    pa.field("truncated_targets", pa.int64()),
])

# pack.py
PACKED_INDEX_SCHEMA = pa.schema([
    pa.field("row", pa.int64()),  # packed row (0-based over all shards)
    pa.field("segment", pa.int32()),  # 1-based within the row
    pa.field("input_offset", pa.int32()),  # first input token in the row (decoder-only) / inputs row
    pa.field("target_offset", pa.int32()),  # first target token in the row / targets row
    pa.field("input_tokens", pa.int32()),  # after truncation, EOS included
    pa.field("target_tokens", pa.int32()),
    pa.field("input_tokens_full", pa.int32()),  # before truncation, EOS included
    pa.field("target_tokens_full", pa.int32()),
    pa.field("position", pa.int64()),  # the example's position in the mixture
    pa.field("dataset", pa.string()),
    pa.field("example_id", pa.string()),
    pa.field("template_id", pa.int32()),
    pa.field("epoch", pa.int32()),
])

# validate.py
REJECTED_SCHEMA = pa.schema([
    pa.field("split", pa.string()),
    pa.field("row_index", pa.int64()),
    pa.field("kind", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("row", pa.string()),
])
