"""Few-shot prompts at scale: estimated trimming equals exact re-encoding, consistent exemplars when
the train split grows, and the exemplar file read by the columns the prompts use."""

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanpipe.core.config import FewShotConfig, TokenizeConfig
from flanpipe.core.config.registry import load_registry
from flanpipe.core.text.fewshot import FewShotPool, few_shot_inputs
from flanpipe.core.text.templates import load_bank, render_template
from flanpipe.core.tokens.formats import Format
from flanpipe.core.tokens.tokenizers import load_tokenizer
from flanpipe.stages.evaluate import read_exemplar_rows
from tests.synthetic import load_passages, previous_few_shot_inputs

SPEC, BANK = load_registry().datasets["mnli"], load_bank()["mnli"]


def mnli_rows(n: int, first_id: int, seed: int) -> pa.Table:
    """MNLI-schema rows of real English: premises of 1-6 sentences (some several hundred tokens),
    each with three hypotheses (single sentences from elsewhere), one per label."""
    rng = np.random.default_rng(seed)
    sentences = [s for p in load_passages() for s in re.split(r"(?<=\.) ", p) if len(s.split()) >= 4]
    premises, hypotheses = [], []
    for _ in range(-(-n // 3)):
        start = int(rng.integers(len(sentences) - 6))
        premise = " ".join(sentences[start:start + int(rng.choice([1, 1, 2, 3, 6]))])
        for _ in range(3):
            premises.append(premise)
            hypotheses.append(sentences[int(rng.integers(len(sentences)))])
    labels = rng.permuted(np.tile([0, 1, 2], (len(premises) // 3, 1)), axis=1).ravel()
    return pa.table({"premise": premises[:n], "hypothesis": hypotheses[:n], "label": labels[:n],
                     "idx": np.arange(first_id, first_id + n)})


@pytest.fixture(scope="module")
def fmt(smollm2_dir):
    return Format.of(load_tokenizer(smollm2_dir), TokenizeConfig(), threads=2)


def test_estimated_trimming_equals_exact_reencoding_with_a_real_tokenizer(fmt):
    """With SmolLM2's BPE and real-English prompts of 325-860 tokens, every prompt equals the
    previous implementation's, which re-encodes each joined prompt until it fits: under a budget the
    prompts straddle (every number of exemplars is kept, most prompts are counted exactly), and
    under one most prompts are far below (the estimate decides most of them)."""
    train, queries = mnli_rows(1500, 0, seed=1), mnli_rows(400, 10_000, seed=2)

    def count(text: str) -> int:
        return len(fmt.tokenizer.encode(text)) + 1

    for budget, shots in ((420, {0, 1, 2, 3}), (800, {2, 3})):
        cfg = FewShotConfig(k=3, max_tokens=budget)
        pool = FewShotPool(SPEC, BANK, queries, train, cfg, seed=5)
        kept, counted, built = set(), 0, 0
        for template in BANK.eval_templates[:2]:
            for style in ("dash", "none"):
                fast = pool.prompts(template, style, fmt.counts)
                exact = previous_few_shot_inputs(SPEC, BANK, template, queries, train, cfg, 5, count, style)
                assert fast.prompts == exact
                kept |= set(fast.shots.tolist())
                counted, built = counted + fast.counted, built + len(fast.prompts)
        assert kept == shots
        assert counted < 0.8 * built if budget == 800 else counted > built


def _exemplar_ids(pool: FewShotPool, template) -> list[list[int]]:
    """Each eval row's exemplars, by their train ``idx`` (oldest first)."""
    queries = render_template(BANK, template, pool.eval_raw, "dash").inputs
    ids = pool.train_raw.column("idx").to_numpy()
    return [[int(ids[j]) for j in row if j >= 0] for row in pool.exemplars(template, queries, "dash")]


def test_adding_a_train_row_changes_only_the_exemplars_whose_walk_passes_it():
    """Consistent hashing: a train row added at the front (every position shifts) enters the prompts
    of the eval rows whose walk reaches it, in the place the walk meets it, pushing their last
    exemplar out; every other eval row keeps its exemplars, and its prompt, as they were."""
    train, queries = mnli_rows(600, 0, seed=3), mnli_rows(2000, 10_000, seed=4)
    extra = mnli_rows(1, 50_000, seed=6)
    grown = pa.concat_tables([extra, train])
    cfg = FewShotConfig(k=3, max_tokens=10**6)
    template = BANK.eval_templates[2]
    before = _exemplar_ids(FewShotPool(SPEC, BANK, queries, train, cfg, seed=9), template)
    after = _exemplar_ids(FewShotPool(SPEC, BANK, queries, grown, cfg, seed=9), template)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert 3 <= len(changed) <= 40, len(changed)  # about 2,000 x 3 / 601 walks reach the new row
    for i in changed:
        at = after[i].index(50_000)
        assert after[i][:at] + after[i][at + 1:] == before[i][:2]
    old = few_shot_inputs(SPEC, BANK, template, queries, train, cfg, seed=9)
    new = few_shot_inputs(SPEC, BANK, template, queries, grown, cfg, seed=9)
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == changed
    assert all(extra.column("premise")[0].as_py() in new[i] for i in changed)


def test_exemplars_read_from_a_pool_file_skip_its_extra_columns(tmp_path):
    """A pool file (raw train rows plus ``row_index`` and ``priority``) is read by the columns the
    prompts use, and gives the prompts the raw rows themselves give."""
    train, queries = mnli_rows(300, 0, seed=7), mnli_rows(50, 10_000, seed=8)
    rng = np.random.default_rng(0)
    pool_file = train.append_column("row_index", pa.array(np.arange(300))).append_column(
        "priority", pa.array(rng.integers(0, 2**63, 300, dtype=np.uint64)))
    pool_file = pool_file.take(pa.array(np.argsort(pool_file.column("priority").to_numpy())))
    pq.write_table(pool_file, tmp_path / "mnli.parquet")
    read = read_exemplar_rows(SPEC, BANK, tmp_path / "mnli.parquet")
    assert read.column_names == ["premise", "hypothesis", "label", "idx"]
    cfg = FewShotConfig(k=2, max_tokens=10**6)
    for template in BANK.eval_templates[:2]:
        assert FewShotPool(SPEC, BANK, queries, read, cfg, 1).prompts(template).prompts == \
            few_shot_inputs(SPEC, BANK, template, queries, train, cfg, 1)
    pq.write_table(pool_file.slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="few-shot needs train exemplars"):
        read_exemplar_rows(SPEC, BANK, tmp_path / "empty.parquet")
