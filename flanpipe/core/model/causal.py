"""Packed rows through any ``transformers`` causal LM: segment-isolated attention and a loss on
target tokens only.

Packed rows hold several examples. A token attends to earlier tokens of its own segment only, and
positions restart at 0 for every example, so an example's loss is the same packed or alone. The
isolation goes through the library's own attention paths: :func:`packed_attention_mask` builds,
with ``transformers``' mask functions and our segment rule, a boolean ``T x T`` mask for ``sdpa``
and ``eager`` (CPU), or a FlexAttention ``BlockMask`` for ``flex_attention`` (GPU: fully masked
blocks are skipped, no ``T x T`` mask). Models with sliding-window layers (Gemma 2/3, Mistral,
Qwen with ``use_sliding_window``, Phi-3) get one mask per layer type.

:class:`PackedCausalLM` wraps the model for training: it runs the decoder body, then projects onto
the vocabulary only the hidden states that predict a target token (a packed FLAN row is mostly
inputs; the ``hidden x vocab`` projection of the others is wasted), applies the model's own final
logit soft-capping (Gemma), and returns each target token's cross-entropy. The projection runs
inside the wrapper's ``forward``, so DeepSpeed ZeRO-3's hooks gather the output embedding.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> torch.manual_seed(0) and None
>>> hf = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4))
>>> tokens = torch.tensor([[5, 6, 7, 8, 9, 0]])
>>> segments = torch.tensor([[1, 1, 1, 2, 2, 0]]); positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
>>> targets = torch.tensor([[0, 1, 1, 0, 1, 0]])  # the second and third tokens, the fifth
>>> PackedCausalLM(hf)(tokens, positions, segments, targets).shape  # one loss per predicted target
torch.Size([3])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flex": "flex_attention"}  # train.attention -> transformers


def predicted(segment_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Which next tokens the loss counts, (batch, tokens - 1): token ``t + 1`` when it is a target
    token of the same segment as token ``t``.

    >>> predicted(torch.tensor([[1, 1, 1, 2, 2]]), torch.tensor([[0, 1, 1, 0, 1]])).int().tolist()
    [[1, 1, 0, 1]]
    """
    return loss_mask[:, 1:].bool() & (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)


def same_segment(segment_ids: torch.Tensor):
    """The ``and_mask_function`` of ``transformers``' mask builders: query and key tokens share a
    segment (padding, segment 0, attends to padding only, so no row of the mask is empty)."""

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        return segment_ids[batch_idx, q_idx] == segment_ids[batch_idx, kv_idx]

    return inner


def packed_attention_mask(config, segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32):
    """The attention mask of packed rows for a ``transformers`` model with this ``config``
    (``config._attn_implementation`` picks the form: boolean tensor, float tensor or ``BlockMask``):
    causal, within a segment, and within the sliding window on sliding-window layers. A dict
    ``{layer type: mask}`` for models with ``config.layer_types``, else one mask.

    >>> from transformers import LlamaConfig
    >>> cfg = LlamaConfig(); cfg._attn_implementation = "sdpa"
    >>> packed_attention_mask(cfg, torch.tensor([[1, 1, 2]]))[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    batch, t = segment_ids.shape
    # (the builders read only the batch size, length, dtype and device of the embeddings)
    shape_of = torch.empty(batch, t, 0, dtype=dtype, device=segment_ids.device)
    kwargs = {"config": config, "inputs_embeds": shape_of, "attention_mask": None, "cache": None,
              "and_mask_function": same_segment(segment_ids)}
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        build = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        unknown = set(layer_types) - set(build)
        if unknown:
            raise ValueError(f"{config.model_type}: layer types {sorted(unknown)} have no packed mask here")
        return {kind: build[kind](**kwargs) for kind in set(layer_types)}
    if getattr(config, "sliding_window", None) is not None:  # Mistral, Phi-3: every layer slides
        return create_sliding_window_causal_mask(**kwargs)
    return create_causal_mask(**kwargs)


def final_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What the model's own ``forward`` does to the projected logits: Gemma's final soft-capping
    (``cap * tanh(logits / cap)``); the identity elsewhere."""
    cap = getattr(config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


class PackedCausalLM(nn.Module):
    """A ``transformers`` causal LM trained on packed rows: ``forward`` returns the cross-entropy of
    every predicted target token (see :func:`predicted`), in row-major order, in float32 (float64
    for a float64 model).

    ``self.model`` is the wrapped model itself (export it, not the wrapper)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, segment_ids: torch.Tensor,
                loss_mask: torch.Tensor) -> torch.Tensor:
        config = self.model.config
        body = getattr(self.model, self.model.base_model_prefix)
        embeddings = self.model.get_input_embeddings()
        mask = packed_attention_mask(config, segment_ids, embeddings.weight.dtype)
        hidden = body(input_ids=tokens, attention_mask=mask, position_ids=positions,
                      use_cache=False).last_hidden_state
        valid = predicted(segment_ids, loss_mask)
        selected = hidden[:, :-1][valid]  # (targets, hidden): only these are projected
        logits = final_logits(config, self.model.get_output_embeddings()(selected))
        wide = torch.promote_types(logits.dtype, torch.float32)  # float32 (bf16, fp32 runs) or float64
        return F.cross_entropy(logits.to(wide), tokens[:, 1:][valid].long(), reduction="none")


def flops_per_token(config, parameters: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM's MFU definition: 6 per
    parameter that multiplies (the input embedding is a lookup: left out unless tied to the output
    projection), plus attention scores over a ``seq_len`` window, 12 x layers x heads x head_dim.

    >>> from transformers import LlamaConfig
    >>> cfg = LlamaConfig(vocab_size=100, hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
    >>> flops_per_token(cfg, parameters=1_000, seq_len=10)  # 6 x (1000 - 800) + 12 x 1 x 8 x 10
    2160.0
    """
    lookup = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return float(6 * (parameters - lookup) + attention)
