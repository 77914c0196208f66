"""Stage 4 end to end on the embedded default: the tokenizer, and packed shards read back against an
independent tokenization of each mixture."""

import collections
import json

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from flanpipe.core.config import load_config
from flanpipe.core.tokens.shards import PackedShards, unpack_row
from flanpipe.workflow.planner import Plan
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
CFG = load_config(REPO / "config/config.yaml")
PLAN = Plan(CFG)
LI, LT = CFG.tokenize.max_input_tokens, CFG.tokenize.max_target_tokens


def test_tokenizer_is_shared_and_says_what_it_trained(demo_run):
    manifest = json.loads((demo_run / "models/tokenizer/manifest.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(demo_run / "models/tokenizer/spm.model"))
    assert manifest["special_ids"] == {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3}
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, 3)
    # the demo corpus is far too small for 32k pieces: the largest size it supports, with a warning
    assert manifest["vocab_size_requested"] == CFG.tokenize.tokenizer.vocab_size
    assert manifest["vocab_size"] == sp.get_piece_size() < CFG.tokenize.tokenizer.vocab_size
    log = (demo_run / "logs/tokenizer/shared.log").read_text()
    assert f"asks for {CFG.tokenize.tokenizer.vocab_size} pieces" in log
    assert f"at most {manifest['vocab_size']}" in log
    assert manifest["source"]["mixture"] == "all"
    for mixture in PLAN.mixtures():
        packed = json.loads((demo_run / f"data/packed/{mixture}/manifest.json").read_text())
        assert packed["tokenizer"]["sha256"] == manifest["model_sha256"]
    assert not list((demo_run / "models/tokenizer").glob("*/spm.model"))


def _mixture_rows(demo_run, mixture):
    return pq.read_table(sorted((demo_run / f"data/mixtures/{mixture}/shards").glob("*.parquet")))


@pytest.mark.parametrize("mixture", PLAN.mixtures())
def test_unpacking_gives_back_each_tokenized_example_once(demo_run, mixture):
    """Multiset equality against the raw SentencePiece encoding of every mixture row, one at a time."""
    sp = spm.SentencePieceProcessor(model_file=str(demo_run / "models/tokenizer/spm.model"))
    eos = sp.eos_id()
    table = _mixture_rows(demo_run, mixture)
    expected = collections.Counter(
        (tuple(sp.encode(x)[:LI - 1] + [eos]), tuple(sp.encode(y)[:LT - 1] + [eos]))
        for x, y in zip(table.column("inputs").to_pylist(), table.column("targets").to_pylist(), strict=True))
    shards = PackedShards(demo_run / f"data/packed/{mixture}")
    got = collections.Counter((tuple(a.tolist()), tuple(b.tolist()))
                              for i in range(len(shards)) for a, b in unpack_row(shards[i]))
    assert got == expected
    assert len(shards) == shards.manifest["rows"]


@pytest.mark.parametrize("mixture", PLAN.mixtures())
def test_segments_positions_and_loss_mask_agree(demo_run, mixture):
    shards = PackedShards(demo_run / f"data/packed/{mixture}")
    rows = shards.take(np.arange(len(shards)))
    index = pq.read_table(demo_run / f"data/packed/{mixture}/index.parquet").to_pylist()
    by_row = collections.defaultdict(list)
    for e in index:
        by_row[e["row"]].append(e)
    assert sorted(by_row) == list(range(len(rows)))
    for r, row in enumerate(rows):
        seg, pos, mask = row["segment_ids"], row["positions"], row["loss_mask"]
        entries = by_row[r]
        assert [e["segment"] for e in entries] == list(range(1, len(entries) + 1))
        for e in entries:
            n_in, n_tg = e["input_tokens"], e["target_tokens"]
            span = slice(e["input_offset"], e["input_offset"] + n_in + n_tg)
            # each example sits whole in one contiguous span of its row
            assert (np.flatnonzero(seg == e["segment"]) == np.arange(span.start, span.stop)).all()
            assert pos[span].tolist() == list(range(n_in + n_tg))
            assert mask[span].tolist() == [0] * n_in + [1] * n_tg
            assert e["target_offset"] == e["input_offset"] + n_in
            assert row["tokens"][span.start + n_in - 1] == row["tokens"][span.stop - 1] == 1  # EOS
        pad = seg == 0
        assert not pos[pad].any() and not mask[pad].any() and not row["tokens"][pad].any()


def test_packing_stats_in_the_catalog(demo_run, monkeypatch):
    monkeypatch.chdir(demo_run)  # the catalog's views read paths relative to the workflow directory
    con = duckdb.connect("data/catalog.duckdb", read_only=True)
    try:
        stats = con.sql("SELECT * FROM packing_stats").to_arrow_table().to_pylist()
        tokens = dict(con.execute("SELECT mixture, sum(input_tokens + target_tokens) FROM token_stats "
                                  "GROUP BY mixture").fetchall())
        examples = dict(con.execute("SELECT mixture, count(*) FROM mixtures GROUP BY mixture").fetchall())
    finally:
        con.close()
    assert [s["mixture"] for s in stats] == sorted(PLAN.mixtures())
    for s in stats:
        packed = PackedShards(demo_run / f"data/packed/{s['mixture']}")
        rows = packed.take(np.arange(len(packed)))
        assert s["rows"] == len(rows) and s["examples"] == examples[s["mixture"]]
        assert s["non_pad_tokens"] == int((rows["segment_ids"] > 0).sum()) == tokens[s["mixture"]]
        assert s["target_tokens"] == int(rows["loss_mask"].sum())
        assert s["efficiency"] == pytest.approx(s["non_pad_tokens"] / (len(rows) * (LI + LT)))
        assert s["rows_lower_bound"] <= s["rows"] <= s["rows_next_fit"] <= s["examples"]
        assert s["efficiency"] > s["efficiency_next_fit"] > s["efficiency_pad_to_max"]
