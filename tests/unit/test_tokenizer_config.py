"""The tokenizer follows a pretrained checkpoint: config keys, checked before any job runs."""

import pytest

from flanpipe.core.config import ConfigError, parse_config
from flanpipe.workflow.planner import Plan

PRETRAINED = {"model": {"source": "pretrained", "path": "/ckpt/smollm2"}}


def test_a_pretrained_checkpoint_brings_its_own_tokenizer_without_further_config():
    cfg = parse_config({"train": PRETRAINED})
    assert cfg.tokenize.tokenizer.source == "auto"
    assert Plan(cfg).given_tokenizer() == "/ckpt/smollm2"
    assert cfg.tokenize.add_bos is None  # the checkpoint's convention, unless overridden


def test_the_checkpoints_folder_or_a_file_in_it_may_be_named():
    for path in ("/ckpt/smollm2", "/ckpt/smollm2/", "/ckpt/smollm2/tokenizer.json"):
        cfg = parse_config({"train": PRETRAINED, "tokenize": {"tokenizer": {"source": "file", "path": path}}})
        assert Plan(cfg).given_tokenizer() == path


@pytest.mark.parametrize("tokenizer, keys", [
    ({"source": "train"}, ["tokenize.tokenizer.source: 'train' with train.model.source 'pretrained'",
                           "allowed: 'auto'"]),
    ({"source": "file", "path": "/work/models/tokenizer/spm.model"},
     ["tokenize.tokenizer.path: /work/models/tokenizer/spm.model is not the tokenizer of the checkpoint "
      "train.model.path (/ckpt/smollm2)", "set tokenize.tokenizer.source to 'auto'"]),
    ({"source": "file", "path": "/ckpt/llama2/tokenizer.model"}, ["is not the tokenizer of the checkpoint"]),
])
def test_another_tokenizer_with_a_pretrained_checkpoint_is_refused_naming_the_keys(tokenizer, keys):
    with pytest.raises(ConfigError) as err:
        parse_config({"train": PRETRAINED, "tokenize": {"tokenizer": tokenizer}})
    for key in keys:
        assert key in str(err.value)


def test_without_a_checkpoint_auto_trains_and_a_given_model_file_is_copied():
    assert Plan(parse_config({})).given_tokenizer() is None
    given = {"tokenizer": {"source": "file", "path": "/t/spm.model"}}
    assert Plan(parse_config({"tokenize": given})).given_tokenizer() is None  # copied to models/tokenizer/
    folder = {"tokenizer": {"source": "file", "path": "/t/llama3"}}
    assert Plan(parse_config({"tokenize": folder})).given_tokenizer() == "/t/llama3"


def test_the_bos_override_is_a_boolean():
    assert parse_config({"tokenize": {"add_bos": True}}).tokenize.add_bos is True
    with pytest.raises(ConfigError, match="tokenize.add_bos: Input should be a valid boolean"):
        parse_config({"tokenize": {"add_bos": "sometimes"}})
