"""The registry against the FLAN paper's own counts (Wei et al. 2021, Figure 3)."""

from collections import defaultdict

import pyarrow as pa
import pytest

from flanpipe.core.config.registry import RegistryError, arrow_type, embedded_datasets, load_registry

# Paper datasets per cluster, as the paper counts them (ANLI R1-R3 is one dataset, and so are ARC
# easy/challenge, ParaCrawl's three pairs and SQuAD v1/v2).
PAPER_COUNTS = {
    "nli": 7, "commonsense": 4, "sentiment": 4, "paraphrase": 4, "closed_book_qa": 3,
    "struct_to_text": 4, "translation": 8, "reading_comprehension": 5,
    "reading_comprehension_commonsense": 2, "coreference": 3, "misc": 7, "summarization": 11,
}


@pytest.fixture(scope="module")
def reg():
    return load_registry()


def test_twelve_clusters_and_62_paper_datasets(reg):
    assert list(reg.clusters) == list(PAPER_COUNTS)
    papers = defaultdict(set)
    for spec in reg.datasets.values():
        papers[spec.cluster].add(spec.paper_name)
    assert {c: len(p) for c, p in papers.items()} == PAPER_COUNTS
    assert sum(len(p) for p in papers.values()) == 62


def test_paper_datasets_named_in_the_issue_are_present(reg):
    for name in ["anli_r1", "anli_r2", "anli_r3", "cb", "mnli", "qnli", "rte", "snli", "wnli",
                 "story_cloze", "sentiment140", "arc_easy", "arc_challenge", "web_nlg",
                 "paracrawl_en_fr", "wmt14_en_fr", "squad_v2", "record", "wsc273", "fix_punct",
                 "math_dataset", "wiki_lingua_en", "ag_news"]:
        assert name in reg.datasets, name


def test_every_entry_is_complete(reg):
    for name, spec in reg.datasets.items():
        assert spec.description and spec.paper_name, name
        assert spec.splits.eval or spec.splits.train, name
        assert spec.text_fields, name
        if spec.available_on_hub:
            assert spec.hub.id, name
        else:
            assert spec.local_instructions, name
        if spec.task.type == "classification":
            assert len(spec.task.labels) >= 2, name
        # the Arrow schema builds from the declared features
        assert isinstance(spec.schema, pa.Schema) and len(spec.schema) == len(spec.features)


def test_exclusions_are_the_papers_and_symmetric(reg):
    excl = {c: set(v.excludes) for c, v in reg.clusters.items()}
    assert excl["nli"] == {"paraphrase"} and excl["paraphrase"] == {"nli"}
    assert excl["reading_comprehension"] == {"reading_comprehension_commonsense"}
    assert excl["commonsense"] == {"reading_comprehension_commonsense"}
    for a, others in excl.items():
        for b in others:
            assert a in excl[b]


def test_training_clusters_leave_out_heldout_and_its_exclusions(reg):
    train = reg.training_clusters("nli")
    assert "nli" not in train and "paraphrase" not in train and len(train) == 10
    assert reg.training_clusters("all") == list(reg.clusters)
    train = reg.training_clusters("reading_comprehension_commonsense")
    assert not {"reading_comprehension", "commonsense"} & set(train) and len(train) == 9
    with pytest.raises(KeyError):
        reg.training_clusters("astrology")


def test_embedded_default_covers_every_cluster(reg):
    embedded = embedded_datasets()
    assert len(embedded) >= 12
    assert {reg.datasets[d].cluster for d in embedded} == set(reg.clusters)


def test_type_language():
    assert arrow_type("list<list<string>>") == pa.list_(pa.list_(pa.string()))
    assert arrow_type([{"a": "int"}]) == pa.list_(pa.struct([("a", pa.int64())]))
    with pytest.raises(RegistryError, match="unknown feature type"):
        arrow_type("complex")


def test_distinct_fields_name_string_features(reg):
    from pydantic import ValidationError

    from flanpipe.core.config.registry import DatasetSpec

    assert reg.datasets["squad_v1"].distinct == ("question", "answers.text")
    assert reg.datasets["mnli"].distinct == ("hypothesis",) and reg.datasets["sst2"].distinct == ()
    # every passage- or premise-sharing dataset the issue names declares what tells examples apart
    for name in ["squad_v1", "squad_v2", "drop", "record", "multirc", "quac", "mnli", "snli", "anli_r1"]:
        assert reg.datasets[name].distinct, name
    entry = reg.datasets["squad_v1"].model_dump()
    for bad, message in [(["question", "question"], "names a field twice"),
                         (["questions"], "'questions' is not among the features"),
                         (["answers.answer_start"], "'answers.answer_start' is list<item: int64>.*allowed")]:
        with pytest.raises(ValidationError, match=f"distinct: .*{message}"):
            DatasetSpec(**{**entry, "distinct": bad})
