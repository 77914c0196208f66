"""Flan 2022's template mix and the submixtures: prompt types drawn at their configured rates from
stable keys, few-shot train prompts from the dataset's own pool (never the example itself), and
groups of datasets with their own cap, rate maximum and weight.

Raw tables are the embedded RTE and SST-2 demo rows (real English, the hub schema), replicated with
distinct ids where a test needs thousands of rows.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy import stats

from flanpipe.core.config import (
    PROMPT_TYPES,
    ConfigError,
    FewShotConfig,
    PoolSlice,
    PromptMix,
    SubmixtureConfig,
    TemplatizeSlice,
    parse_config,
)
from flanpipe.core.text.keys import prompt_type_draws
from flanpipe.core.text.schemas import MATCH_SCHEMA
from flanpipe.core.text.templates import load_bank, render_template
from flanpipe.stages.mix import mixing_rates, submixture_rates
from flanpipe.stages.templatize import templatize_dataset
from flanpipe.workflow.planner import Plan
from tests.conftest import REPO
from tests.unit.test_pool import build, mixture_rows

QUARTERS = PromptMix(zs_opt=0.25, zs_noopt=0.25, fs_opt=0.25, fs_noopt=0.25, inverted=0.0)


def embedded(name: str) -> pa.Table:
    rows = [json.loads(line) for line in
            (REPO / f"flanpipe/data/embedded/{name}/train.jsonl").read_text().splitlines()]
    return pa.Table.from_pylist(rows)


def replicated(name: str, n: int) -> pa.Table:
    """``n`` rows cycling through the embedded train rows, each with its own id and ``row_index``
    (so texts repeat under different ids: exact duplicates of each other's text)."""
    base = embedded(name)
    t = base.take(pa.array(np.arange(n) % base.num_rows))
    t = t.set_column(t.schema.get_field_index("idx"), "idx", pa.array(np.arange(n) * 3 + 1, pa.int64()))
    return t.append_column("row_index", pa.array(np.arange(n), pa.int64()))


def cfg(mix: PromptMix, k: int = 3, max_input_tokens: int = 512, passes: int = 1) -> TemplatizeSlice:
    return TemplatizeSlice(seed=11, format="instructions", options="dash", passes=passes, cut_long_field=True,
                           chars_per_token=3.0, max_input_tokens=max_input_tokens, mix=mix,
                           few_shot=FewShotConfig(k=k) if mix.few_shot else None)


def render(tmp_path, name: str, train: pa.Table, slice_: TemplatizeSlice, tag: str = "out",
           batch_rows: int = 8_192) -> pa.Table:
    pq.write_table(train, tmp_path / f"{tag}-train.parquet")
    pq.write_table(train.slice(0, 5), tmp_path / f"{tag}-eval.parquet")
    out = tmp_path / f"{tag}.parquet"
    templatize_dataset(name, tmp_path / f"{tag}-train.parquet", tmp_path / f"{tag}-eval.parquet", out, slice_,
                       batch_rows=batch_rows)
    t = pq.read_table(out)
    return t.filter(pc.equal(t["split"], "train"))


def splitmix_uniform(key: int, name: str, seed: int) -> float:
    """The draw of :func:`~flanpipe.core.text.keys.uniforms`, worked out with Python integers."""
    mask = 2**64 - 1
    z = key ^ ((seed + zlib.crc32(name.encode())) % 2**32)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return ((z ^ (z >> 31)) >> 11) / 2**53


def test_prompt_types_by_hand():
    """Six keys: each type is the interval of (0.1, 0.2, 0.3, 0.4) that holds its splitmix64 draw."""
    keys = [0, 1, 2, 3, 2**63 + 5, 12345678901]
    rates = (0.1, 0.2, 0.3, 0.4)
    for p in range(2):
        u = [splitmix_uniform(k, f"prompt_type/rte/{p}", 7) for k in keys]
        want = [int(np.searchsorted(np.cumsum(rates), x, side="right")) for x in u]
        got = prompt_type_draws(np.array(keys, np.uint64), rates, 2, "rte", 7)[p].tolist()
        assert got == want, (u, got)
    only = prompt_type_draws(np.array(keys, np.uint64), (0.0, 0.0, 1.0, 0.0), 1, "rte", 7)
    assert only.tolist() == [[2] * 6]


def test_rendered_prompt_types_match_the_rates(tmp_path):
    """3,000 RTE rows at 25% each: every type's count within 4 binomial sd of 750, a chi-square
    goodness of fit that does not reject (p > 0.001), zero-shot rows without exemplars, few-shot
    rows with 1 to k, and the OPTIONS suffix exactly on the ``*_opt`` rows."""
    n = 3_000
    train = render(tmp_path, "rte", replicated("rte", n), cfg(QUARTERS), batch_rows=1_000)
    counts = np.array([pc.sum(pc.equal(train["prompt_type"], t)).as_py() for t in PROMPT_TYPES])
    assert counts.sum() == n
    sd = np.sqrt(n * 0.25 * 0.75)
    assert np.abs(counts - n / 4).max() < 4 * sd, counts
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    rows = train.to_pylist()
    for r in rows:
        few = r["prompt_type"].startswith("fs_")
        assert (1 <= r["shots"] <= 3) if few else r["shots"] == 0, r
        assert ("\n\nOPTIONS:\n" in r["inputs"]) == r["prompt_type"].endswith("_opt"), r
        assert r["inputs"].count("OPTIONS:") == (1 + r["shots"] if r["prompt_type"] == "fs_opt" else
                                                 int(r["prompt_type"] == "zs_opt"))
    # the exemplars asked for: uniform on 1..3 (budget 512 tokens fits three RTE exemplars)
    shots = np.bincount([r["shots"] for r in rows if r["prompt_type"].startswith("fs_")], minlength=4)[1:]
    assert stats.chisquare(shots).pvalue > 1e-3, shots


def test_turned_around_templates_at_their_rate(tmp_path):
    """``inverted: 0.4`` over 3,000 rows: the share of turned-around templates within 4 sd; they
    fold into no-options types (a turned-around task has no OPTIONS)."""
    n = 3_000
    train = render(tmp_path, "rte", replicated("rte", n), cfg(PromptMix(inverted=0.4)))
    inverted = pc.sum(train["inverted"]).as_py()
    assert abs(inverted - 0.4 * n) < 4 * np.sqrt(n * 0.4 * 0.6), inverted
    types = np.asarray(train["prompt_type"].to_pylist())
    assert ((types == "zs_opt").sum(), (types == "zs_noopt").sum()) == (n - inverted, inverted)


def exemplar_split(shown: str, solved: set[str], delimiter: str = "\n\n") -> list[str] | None:
    """``shown`` cut into solved train rows joined by the delimiter (None: it is not such a join)."""
    if not shown:
        return []
    for text in solved:
        if shown == text:
            return [text]
        if shown.startswith(text + delimiter):
            rest = exemplar_split(shown[len(text) + len(delimiter):], solved, delimiter)
            if rest is not None:
                return [text, *rest]
    return None


def test_few_shot_prompts_never_contain_their_own_example(tmp_path):
    """Every row few-shot, over rows whose texts repeat under other ids: each prompt is solved
    train rows of its own template (input, newline, target) joined by the delimiter, then its own
    input; neither its own example nor a copy of its text is among the exemplars; the prompt fits
    the budget (characters / chars_per_token)."""
    bank = load_bank()["rte"]
    raw = replicated("rte", 120)
    train = render(tmp_path, "rte", raw, cfg(PromptMix(zs_opt=0.0, fs_opt=1.0, inverted=0.0), k=4,
                                              max_input_tokens=300))
    solved, own = {}, {}
    for t in bank.templates:
        r = render_template(bank, t, raw, "dash")
        solved[t.id] = {f"{i}\n{o}" for i, o in zip(r.inputs.to_pylist(), r.targets.to_pylist(), strict=True)}
        for idx, text in zip(raw["idx"].to_pylist(), r.inputs.to_pylist(), strict=True):
            own[(t.id, f"rte:train:{idx}")] = text
    assert train.num_rows == 120 and pc.sum(train["shots"]).as_py() > 120  # most rows hold several
    for r in train.to_pylist():
        query = own[(r["template_id"], r["example_id"])]
        assert r["inputs"].endswith(query)
        shown = r["inputs"][:-len(query)]
        assert query not in shown, r["example_id"]  # not itself, nor a row with its text
        exemplars = exemplar_split(shown.removesuffix("\n\n"), solved[r["template_id"]])
        assert exemplars is not None and len(exemplars) == r["shots"], r
        assert np.ceil(len(r["inputs"]) / 3.0) <= 300


def test_no_exemplar_is_a_contaminated_row(tmp_path):
    """Rows that decontamination matched against a held-out eval set (any cluster) are never shown
    as exemplars, only asked as themselves (the mixer drops or keeps those per mixture)."""
    raw = embedded("sst2")
    raw = raw.append_column("row_index", pa.array(np.arange(raw.num_rows), pa.int64()))
    dirty = [0, 3, 4, 9, 17, 30]
    pq.write_table(pa.Table.from_pylist([
        {"row_index": r, "example_id": f"sst2:train:{r}", "eval_dataset": "rte", "eval_cluster": "nli",
         "ngram": 8, "matches": 1} for r in dirty], schema=MATCH_SCHEMA), tmp_path / "matches.parquet")
    pq.write_table(raw, tmp_path / "train.parquet")
    pq.write_table(raw.slice(0, 5), tmp_path / "eval.parquet")
    slice_ = cfg(PromptMix(zs_opt=0.0, fs_noopt=1.0), k=3)
    for tag, contaminated in (("clean", tmp_path / "matches.parquet"), ("all", None)):
        templatize_dataset("sst2", tmp_path / "train.parquet", tmp_path / "eval.parquet",
                           tmp_path / f"{tag}.parquet", slice_, contaminated=contaminated)
    sentences = raw["sentence"].to_pylist()
    for tag in ("clean", "all"):
        t = pq.read_table(tmp_path / f"{tag}.parquet").to_pylist()
        shown = {i for r in t if r["split"] == "train" for i in dirty
                 if sentences[i] in r["inputs"] and r["row_index"] != i}
        assert (shown == set()) if tag == "clean" else len(shown) >= 3, (tag, shown)


def test_adding_one_raw_row_changes_no_other_rendering(tmp_path):
    """The mix at 25% each over 40 SST-2 rows, then again with a row added at the front (every
    position shifts): zero-shot renderings and every row's prompt type and template are unchanged;
    a few-shot rendering changes only where the new row became one of its exemplars (its walk on
    the exemplar ring passes the new row: consistent hashing)."""
    raw = embedded("sst2")
    raw = raw.append_column("row_index", pa.array(np.arange(raw.num_rows), pa.int64()))
    new = pa.Table.from_pylist([{"sentence": "a quietly devastating film that never once raises its voice",
                                 "label": 1, "idx": 9_999, "row_index": 0}], schema=raw.schema)
    more = pa.concat_tables([new, raw.set_column(raw.schema.get_field_index("row_index"), "row_index",
                                                 pa.array(np.arange(1, raw.num_rows + 1), pa.int64()))])
    slice_ = cfg(QUARTERS, passes=2)
    before = {(r["example_id"], r["pass"]): r for r in render(tmp_path, "sst2", raw, slice_, "a").to_pylist()}
    after = {(r["example_id"], r["pass"]): r for r in render(tmp_path, "sst2", more, slice_, "b").to_pylist()}
    assert set(after) - set(before) == {("sst2:train:9999", 0), ("sst2:train:9999", 1)}
    changed = 0
    for key, r in before.items():
        a = after[key]
        assert (a["prompt_type"], a["template_id"], a["targets"]) == (r["prompt_type"], r["template_id"],
                                                                     r["targets"])
        if a["inputs"] != r["inputs"]:
            assert r["prompt_type"].startswith("fs_"), key
            assert "quietly devastating" in a["inputs"], key
            changed += 1
    assert 0 < changed < len(before) // 4, changed


def test_config_errors_name_the_key():
    local = {"download": {"sources": {"rte": {"kind": "local", "path": "/data/rte"}}}}
    bad = [
        ({"mix": {"submixtures": {"a": {"datasets": ["rte"]}, "b": {"datasets": ["rte", "sst2"]}}}},
         "b.datasets: 'rte' is already in submixture 'a'"),
        ({"mix": {"submixtures": {"a": {"datasets": ["no_such_set"]}}}}, "a.datasets: unknown dataset"),
        ({"mix": {"submixtures": {"a": {"weight": 0.0}}}}, "mix.submixtures.a.weight"),
        ({"mix": {"submixtures": {"a": {"weight": -1.0}}}}, "mix.submixtures.a.weight"),
        ({"mix": {"submixtures": {"mine": {"datasets": ["rte"]}}}}, "are in no submixture"),
        ({"datasets": ["rte", "sst2"], "heldout_clusters": [],
          "mix": {"submixtures": {"a": {}, "mine": {"datasets": ["cb"]}}}}, "mix.submixtures.mine.datasets"),
        ({"templatize": {"mix": {"fs_opt": 0.5}}}, "templatize.mix: the rates"),
        ({"templatize": {"mix": {"overrides": {"nope": {}}}}}, "templatize.mix.overrides: unknown key"),
        ({"templatize": {"mix": {"zs_opt": 0.5, "fs_opt": 0.5}, "few_shot": {"k": 0}}},
         "templatize.few_shot.k: 0"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
            parse_config({**local, **data})


def test_a_local_dataset_in_its_own_submixture():
    """A registry dataset read from local files (``download.sources``, kind local) in a group of
    its own at weight 0.25, with its own cap and few-shot template mix: the config resolves per
    dataset, the pool holds enough rows for the larger cap, and the groups' rates are the
    hand-computed ones."""
    c = parse_config({
        "datasets": ["rte", "sst2", "boolq"], "heldout_clusters": [],
        "download": {"sources": {"boolq": {"kind": "local", "path": "/data/my_boolq"}}},
        "templatize": {"mix": {"overrides": {"mine": {"zs_opt": 0.5, "fs_opt": 0.5}}}},
        "mix": {"cap": 100, "submixtures": {"flan2021": {"datasets": "all"},
                                            "mine": {"datasets": ["boolq"], "weight": 0.25, "cap": 400,
                                                     "rate_max": 50}}}})
    plan = Plan(c)
    assert plan.slice("templatize", dataset="boolq")["mix"]["fs_opt"] == 0.5
    assert plan.slice("templatize", dataset="boolq")["few_shot"]["k"] == 3
    assert plan.slice("templatize", dataset="rte")["mix"]["fs_opt"] == 0.0
    assert plan.slice("templatize", dataset="rte")["few_shot"] is None
    assert PoolSlice.of(c).cap == 400
    groups = c.mix.groups()
    assert (groups["flan2021"].cap, groups["mine"].cap, groups["mine"].rate_max) == (100, 400, 50)
    sizes = np.array([80, 100, 400])  # rte, sst2 in flan2021; boolq in mine
    rates = submixture_rates(sizes, ["flan2021", "flan2021", "mine"], groups, 1.0)
    # flan2021: 0.8 of the mixture, 80:100 within; mine: 0.2 (weights 1 and 0.25)
    assert np.allclose(rates, [0.8 * 80 / 180, 0.8 * 100 / 180, 0.2], rtol=0, atol=1e-15)
    # one group: exactly today's examples-proportional rates, bit for bit
    one = {"flan2021": SubmixtureConfig(rate_max=3000)}
    assert (submixture_rates(sizes, ["flan2021"] * 3, one, 1.0) == mixing_rates(sizes, 3000, 1.0)).all()
    # a mixture that holds no row of a group shares the whole weight among the others
    alone = submixture_rates(np.array([80, 100, 0]), ["flan2021", "flan2021", "mine"], groups, 1.0)
    assert alone.sum() == 1.0 and alone[2] == 0.0


def test_mix_keys_move_only_their_slices():
    base = parse_config({})
    changed = parse_config({"templatize": {"mix": {"zs_opt": 0.5, "zs_noopt": 0.5}}})
    moved = {r for r in ("pool", "templatize", "mix", "evaluate")
             if Plan(base).slice(r, dataset="rte") != Plan(changed).slice(r, dataset="rte")}
    assert moved == {"templatize"}
    few = parse_config({"templatize": {"few_shot": {"k": 2}}})  # evaluation's only, while no row is few-shot
    assert Plan(base).slice("templatize", dataset="rte") == Plan(few).slice("templatize", dataset="rte")


def test_a_mixture_of_two_submixtures(tmp_path):
    """RTE in `flan2021` (cap 30) and SST-2, read from local files, in `mine` (cap 12, weight 0.25,
    all few-shot) through every stage: each group keeps its own cap, the sampled rows split 4:1,
    and the stats' per-type counts and submixtures are those of the shards."""
    few_shot_only = {"zs_opt": 0.0, "fs_noopt": 1.0}
    tables = {"rte": embedded("rte"), "sst2": embedded("sst2")}
    mix_dir, _, _ = build(tmp_path, tables, cap=30, pool_factor=None,
                          extra={"templatize": {"mix": {"overrides": {"mine": few_shot_only}},
                                                "few_shot": {"max_tokens": 256}},
                                 "mix": {"submixtures": {"flan2021": {},
                                                         "mine": {"datasets": ["sst2"], "cap": 12,
                                                                  "weight": 0.25}}}})
    stats_rows = {r["dataset"]: r for r in pq.read_table(mix_dir / "stats.parquet").to_pylist()}
    assert (stats_rows["rte"]["kept"], stats_rows["sst2"]["kept"]) == (30, 12)
    assert (stats_rows["rte"]["submixture"], stats_rows["sst2"]["submixture"]) == ("flan2021", "mine")
    assert (stats_rows["rte"]["rate"], stats_rows["sst2"]["rate"]) == (0.8, 0.2)
    rows = mixture_rows(mix_dir)
    total = rows.num_rows
    assert abs(stats_rows["sst2"]["sampled"] - 0.2 * total) <= 1
    for name, r in stats_rows.items():
        mine = rows.filter(pc.equal(rows["dataset"], name))
        assert set(mine["submixture"].to_pylist()) == {r["submixture"]}
        assert {t: r[t] for t in PROMPT_TYPES} == {t: pc.sum(pc.equal(mine["prompt_type"], t)).as_py()
                                                   for t in PROMPT_TYPES}
    assert stats_rows["sst2"]["fs_noopt"] == stats_rows["sst2"]["sampled"]
    assert stats_rows["rte"]["fs_opt"] + stats_rows["rte"]["fs_noopt"] == 0
    sst2 = rows.filter(pc.equal(rows["dataset"], "sst2"))
    assert pc.min(sst2["shots"]).as_py() >= 1  # short sentences: an exemplar always fits
    manifest = json.loads((mix_dir / "manifest.json").read_text())
    assert manifest["submixtures"]["mine"] == {"cap": 12, "rate_max": 3000, "weight": 0.25,
                                               "datasets": ["sst2"]}
