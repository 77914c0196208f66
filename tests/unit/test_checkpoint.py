"""The checkpoint seam: every architecture's export reloads in `transformers` alone with identical
logits; a real pretrained checkpoint (SmolLM2) loads and keeps packed examples apart. (Under ZeRO-3
with 2 ranks, a sharded checkpoint loads partitioned and exports back bit for bit: the checkpoint
benchmark's run, tests/unit/test_bench_checkpoint.py.)"""


import pytest
import torch
from safetensors import safe_open

from flanpipe.core.config import ModelSpec
from flanpipe.core.model.checkpoint import (
    build_model,
    load_checkpoint,
    model_config,
    save_checkpoint,
    weight_files,
)
from tests.unit.test_model import ARCHITECTURES, alone_losses, packed_losses, tiny_model


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from flanpipe.core.tokens.tokenizers import load_tokenizer

    return load_tokenizer(smollm2_dir)


def tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            out |= {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    return out


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_export_reloads_in_transformers_with_identical_logits(name, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_model(name, seed=3)
    # small shards: every architecture's export is split over several files and an index
    save_checkpoint(model, tokenizer, tmp_path / "hf", max_shard_bytes=20_000)
    assert len(weight_files(tmp_path / "hf")) > 1
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    assert type(reloaded) is type(model)
    tokens = torch.randint(4, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=tokens).logits, model(input_ids=tokens).logits)
    text = "Premise: the cat sat.\nOPTIONS:\n- yes\n- no"
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert saved(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)


def test_an_export_missing_a_parameters_elements_is_refused_and_leaves_no_folder(tmp_path, tokenizer):
    """ZeRO-3's near-empty export: a partitioned parameter (``ds_numel`` whole, its local data
    empty) written without being gathered. The export counts what it wrote against the model and
    stops before the folder is in place; the same model whole exports with every element."""
    from flanpipe.core.model.checkpoint import expected_export

    model = tiny_model("llama", seed=3)
    save_checkpoint(model, tokenizer, tmp_path / "whole")
    written = tensors(tmp_path / "whole")
    size = expected_export(model, model.dtype)
    assert (size.tensors, size.elements) == (len(written), sum(t.numel() for t in written.values()))
    param = model.model.layers[0].mlp.down_proj.weight
    param.ds_numel = param.numel()  # as DeepSpeed marks a partitioned parameter; no ds_id: not gathered
    param.data = torch.empty(0)
    with pytest.raises(RuntimeError, match=r"the export wrote 2\d tensors, [\d,]+ elements, .* \(empty: "
                                           r"model.layers.0.mlp.down_proj.weight\); a ZeRO-3 parameter"):
        save_checkpoint(model, tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_new_models_vocabulary_is_padded_and_its_special_ids_are_ours():
    spec = ModelSpec(architecture="phi3", hidden_size=32, num_layers=1, num_heads=4)
    config = model_config(spec, 32_001, 64, {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": 3})
    assert config.vocab_size == 32_128 and config.vocab_size % 128 == 0
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (0, 1, 3)  # not Phi-3's 32000
    model = build_model(spec, 301, 64)
    assert model.get_input_embeddings().weight.shape == (384, 32)


def test_bad_model_settings_name_the_key():
    with pytest.raises(ValueError, match=r"train\.model\.hf_config\.sliding_windw: not an attribute"):
        model_config(ModelSpec(architecture="mistral", hf_config={"sliding_windw": 8}), 100, 64)
    with pytest.raises(ValueError, match=r"train\.model\.num_kv_heads: .*'gpt_neox'"):
        model_config(ModelSpec(architecture="gpt_neox", num_heads=4, num_kv_heads=2, hidden_size=32), 100, 64)


def test_smollm2_loads_from_its_folder_and_keeps_packed_examples_apart(smollm2_dir):
    """A real pretrained Llama-architecture checkpoint (tied embeddings, 49,152-id BPE tokenizer):
    loaded with local files only, with its tokenizer; real sentences packed in one row score as they
    do alone; and a pretrained source whose embedding is smaller than the tokenizer is refused."""
    model, tok = load_checkpoint(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.tie_word_embeddings and (tok.kind, tok.vocab_size) == ("hf", 49_152)
    pairs = [("Question: what is the capital of France?\nAnswer:", " Paris"),
             ("Translate to German: good morning.\n", "Guten Morgen."),
             ("Is this review positive? The film was a delight.\nOPTIONS:\n- yes\n- no\n", "yes")]
    examples = [(torch.tensor(tok.encode(x)), torch.tensor(tok.encode(y))) for x, y in pairs]
    width = sum(len(x) + len(y) for x, y in examples) + 5
    assert packed_losses(model, examples, width) == pytest.approx(alone_losses(model, examples), rel=1e-4)
    with pytest.raises(ValueError, match="use the checkpoint's own tokenizer"):
        build_model(ModelSpec(source="pretrained", path=str(smollm2_dir)), 60_000, 64)
