"""The adapter seam: LoRA through ``peft`` on a frozen base (``train.adapter.kind: lora``).

- :func:`add_lora`: ``peft``'s LoRA layers injected into a ``transformers`` model (built whole, or
  loaded partitioned under ZeRO-3), the base frozen; the returned ``PeftModel``'s
  ``base_model.model`` is the same ``transformers`` model, which the packed-row wrappers train;
- :func:`merged_state`: the weights with every adapter folded in (``W + alpha / r * B @ A``), under
  the base model's own names, for :func:`~flanpipe.core.model.checkpoint.save_checkpoint`'s merged export
  that plain ``transformers`` loads;
- :func:`is_adapter_folder` and :func:`adapter_base`: what an adapter folder is, and its base.

The adapter's folder enters and leaves through the checkpoint seam
(:func:`~flanpipe.core.model.checkpoint.save_adapter`, :func:`~flanpipe.core.model.checkpoint.load_adapter`).

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from flanpipe.core.config import AdapterConfig
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
>>> peft_model = add_lora(model, AdapterConfig(kind="lora", rank=2), seed=0)
>>> sorted({name.split(".")[-1] for name in peft_model.peft_config["default"].target_modules})
['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
>>> trainable_count(model) == 2 * (4 * (16 + 16) + 3 * (16 + 32))  # r x (d_in + d_out) per layer
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flanpipe.core.model.zero import full_tensor

if TYPE_CHECKING:
    from peft import PeftModel

    from flanpipe.core.config import AdapterConfig

ADAPTER_CONFIG = "adapter_config.json"
LORA_TAG = ".lora_"  # the adapter's parameter names: ``...q_proj.lora_A.default.weight``
BASE_LAYER = ".base_layer"  # peft's wrapped base layer: ``...q_proj.base_layer.weight``


def lora_config(adapter: AdapterConfig):
    """``peft``'s ``LoraConfig`` for ``train.adapter`` (``auto``: ``all-linear``, every linear layer
    but the output head: each architecture's attention and MLP projections)."""
    from peft import LoraConfig

    targets = "all-linear" if adapter.target_modules == "auto" else list(adapter.target_modules)
    return LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                      target_modules=targets, bias="none")


def add_lora(model: torch.nn.Module, adapter: AdapterConfig, seed: int, base_path: str | None = None
             ) -> PeftModel:
    """``model`` with LoRA layers on ``adapter.target_modules``, every base weight frozen. The adapter
    is initialised as ``peft`` does (``A`` Kaiming-uniform, ``B`` zero) from ``torch.manual_seed(seed)``,
    so every rank draws the same. A T5-family model is adapted the same way (its ``q``, ``k``, ``v``,
    ``o``, ``wi_*``, ``wo``)."""
    from peft import get_peft_model

    if not adapter.kind == "lora":
        raise ValueError(f"train.adapter.kind {adapter.kind!r}: add_lora needs 'lora'")
    torch.manual_seed(seed)
    # (the adapters in the base's dtype: DeepSpeed keeps float32 master weights of what it trains, and
    # a bf16 ZeRO-3 model must be bf16 throughout)
    peft_model = get_peft_model(model, lora_config(adapter), autocast_adapter_dtype=False)
    # (get_peft_model sets the model's own name_or_path, empty for a model built from a config)
    peft_model.peft_config["default"].base_model_name_or_path = base_path
    return peft_model


def trainable_count(model: torch.nn.Module) -> int:
    """Parameters that train (``requires_grad``), whole even where ZeRO-3 partitioned them."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{module name: peft LoRA layer}`` of every adapted layer of ``model``."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def is_adapted(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds LoRA layers (its parameter names have ``.lora_``)."""
    return any(LORA_TAG in name for name, _ in model.named_parameters())


def merged_state(model: torch.nn.Module, dtype: torch.dtype, skip=lambda name: False, fold: bool = True):
    """(name, CPU tensor) of every parameter of a LoRA-adapted ``transformers`` model with the
    adapters folded in: an adapted layer's ``base_layer.weight`` becomes ``weight + scaling * B @ A``
    (in float32 or wider, then ``dtype``) under the base model's name (``.base_layer`` dropped); the adapter
    weights themselves are left out, and so are the names ``skip`` accepts (a tied output
    embedding). ``fold=False``: the frozen base's own weights, the adapters left out. Under ZeRO-3
    every rank must iterate it (one layer gathered at a time)."""
    layers = _lora_layers(model)
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or LORA_TAG in name or skip(name):
            continue
        seen.add(id(param))
        owner, _, leaf = name.rpartition(".")
        layer_name = owner.removesuffix(BASE_LAYER)
        if fold and owner.endswith(BASE_LAYER) and leaf == "weight" and layer_name in layers:
            layer = layers[layer_name]
            work = torch.promote_types(dtype, torch.float32)  # (float64 stays float64)
            weight = full_tensor(param, work)
            for key in layer.active_adapters:
                a = full_tensor(layer.lora_A[key].weight, work)
                b = full_tensor(layer.lora_B[key].weight, work)
                delta = (b @ a) * layer.scaling[key]
                weight += delta.T if getattr(layer, "fan_in_fan_out", False) else delta
            yield f"{layer_name}.{leaf}", weight.to(dtype)
        else:
            yield name.replace(BASE_LAYER + ".", "."), full_tensor(param, dtype)


def base_name(name: str) -> str:
    """A parameter's name in the base model: ``.base_layer`` dropped.

    >>> base_name("model.layers.0.self_attn.q_proj.base_layer.weight")
    'model.layers.0.self_attn.q_proj.weight'
    """
    return name.replace(BASE_LAYER + ".", ".")


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a ``peft`` adapter (``adapter_config.json``)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> Path:
    """The base model folder of an adapter: its ``base_model_name_or_path``, relative to the adapter
    folder when not absolute; a missing one is an error naming the key."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path (the base model's folder)")
    path = Path(base) if Path(base).is_absolute() else folder / base
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path {base!r} is not a local "
                                "model folder")
    return path
