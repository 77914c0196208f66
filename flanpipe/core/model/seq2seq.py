"""Packed paired rows through a ``transformers`` T5-family encoder-decoder (T5, T5 v1.1, FLAN-T5, mT5):
isolated examples on both sides, and a loss on target tokens only.

An ``encoder_decoder`` packed row (:mod:`flanpipe.core.tokens.shards`) holds several examples: their inputs
back to back in ``inputs`` (``Li`` slots), their targets in ``targets`` (``Lt`` slots), segment ``s``
of the inputs belonging to segment ``s`` of the targets. :class:`PackedSeq2SeqLM` runs the model's own
stacks, blocks and attention kernels on such rows so that every example's loss is the one it has
alone:

- encoder self-attention stays inside each input segment;
- decoder self-attention is causal inside each target segment;
- cross-attention goes from each target segment to its own input segment only;
- positions restart per example, and T5's relative position buckets are computed from them
  (:func:`relative_bias`: key position minus query position within the segment; cross-segment
  pairs get a bucket too, but the masks hide them);
- each target segment's decoder input is the segment shifted right behind the model's
  ``decoder_start_token_id`` (:func:`decoder_inputs`), as ``transformers``' ``_shift_right`` does
  for one example.

The masks come from ``transformers``' own builders (:func:`packed_seq2seq_masks`; boolean for
``sdpa``, additive for ``eager``, a ``BlockMask`` for ``flex_attention``), and the relative position
bias goes to each block as its ``position_bias``, which the library's attention functions add to
the scores. ``T5Stack.forward`` computes that bias from slot indices, so :func:`run_stack` is its
loop over the library's blocks with our bias and masks instead (embedding, dropout, blocks, final
norm, dropout, as the stack does). mT5 has the same blocks. umT5 has a bias of its own in every
self-attention layer, which its attention computes from slot indices in ``compute_bias``: for the
length of one block's call, :func:`per_example_bias` has that call return the bias of the
per-example positions instead.

>>> from transformers import T5Config, T5ForConditionalGeneration
>>> torch.manual_seed(0) and None
>>> hf = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
...     num_heads=4, feed_forward_proj="gated-gelu", decoder_start_token_id=0, dropout_rate=0.0))
>>> inputs = torch.tensor([[5, 6, 1, 7, 1, 0]]); in_seg = torch.tensor([[1, 1, 1, 2, 2, 0]])
>>> in_pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
>>> targets = torch.tensor([[8, 1, 9, 9, 1]]); tg_seg = torch.tensor([[1, 1, 2, 2, 2]])
>>> tg_pos = torch.tensor([[0, 1, 0, 1, 2]])
>>> PackedSeq2SeqLM(hf)(inputs, in_pos, in_seg, targets, tg_pos, tg_seg, tg_seg > 0).shape
torch.Size([5])
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flanpipe.core.model.causal import same_segment

SEQ2SEQ_TYPES = frozenset({"t5", "mt5", "umt5"})
"""``config.model_type``s :class:`PackedSeq2SeqLM` trains: T5Stack-shaped blocks that take a
``position_bias`` (T5, mT5), and umT5's, whose attention computes one per layer."""


def check_supported(config) -> None:
    """Refuse an encoder-decoder whose packed forward flanpipe does not have, naming the ones it has."""
    if config.model_type not in SEQ2SEQ_TYPES:
        raise ValueError(f"{config.model_type}: packed encoder-decoder training supports "
                         f"{sorted(SEQ2SEQ_TYPES)} (T5, T5 v1.1, FLAN-T5, mT5)")


def start_token(config) -> int:
    """The first decoder input of every target: ``decoder_start_token_id`` (T5: the pad id)."""
    start = getattr(config, "decoder_start_token_id", None)
    start = config.pad_token_id if start is None else start
    if start is None:
        raise ValueError(f"{config.model_type}: the config has neither decoder_start_token_id nor "
                         "pad_token_id (the token every target is decoded after)")
    return int(start)


def decoder_inputs(targets: torch.Tensor, positions: torch.Tensor, start: int) -> torch.Tensor:
    """Each target segment shifted right behind ``start``: a token at position 0 of its example gets
    ``start``, every other token the target token before it.

    >>> decoder_inputs(torch.tensor([[8, 1, 9, 7, 1, 0]]), torch.tensor([[0, 1, 0, 1, 2, 0]]), 0).tolist()
    [[0, 8, 0, 9, 7, 0]]
    """
    shifted = torch.roll(targets, 1, dims=1)
    return torch.where(positions == 0, torch.full_like(targets, start), shifted)


def relative_bias(attention: nn.Module, query_positions: torch.Tensor, key_positions: torch.Tensor
                  ) -> torch.Tensor:
    """T5's relative position bias ``(batch, heads, queries, keys)`` from per-example positions:
    the bucket of ``key position - query position`` (bidirectional in the encoder, causal in the
    decoder), looked up in the attention module's own ``relative_attention_bias`` embedding."""
    relative = key_positions[:, None, :].long() - query_positions[:, :, None].long()
    if is_umt5(attention):  # (its bucket function reads direction and sizes from the module)
        buckets = attention._relative_position_bucket(relative)
    else:
        buckets = attention._relative_position_bucket(relative, bidirectional=not attention.is_decoder,
                                                      num_buckets=attention.relative_attention_num_buckets,
                                                      max_distance=attention.relative_attention_max_distance)
    return attention.relative_attention_bias(buckets).permute(0, 3, 1, 2)


def is_umt5(attention: nn.Module) -> bool:
    """Whether an attention module is umT5's (a relative bias in every layer, computed inside)."""
    return getattr(getattr(attention, "config", None), "model_type", None) == "umt5"


@contextmanager
def per_example_bias(attention: nn.Module, positions: torch.Tensor):
    """While in the block, umT5's ``attention.compute_bias(query_length, key_length, ...)``, which
    the library's attention calls for its bias from slot indices, returns :func:`relative_bias` of
    the per-example ``positions`` (computed inside the call, so under ZeRO-3 the embedding is
    gathered by its own forward hook). Restored on exit."""
    attention.compute_bias = lambda *args, **kwargs: relative_bias(attention, positions, positions)
    try:
        yield
    finally:
        del attention.compute_bias


def cross_segment(target_segments: torch.Tensor, input_segments: torch.Tensor):
    """The ``and_mask_function`` of cross-attention: a target token sees the input tokens of its own
    example; a padding target token (segment 0) sees every input token, so no row of the mask is
    empty (its output is never used)."""

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        query = target_segments[batch_idx, q_idx]
        return (query == input_segments[batch_idx, kv_idx]) | (query == 0)

    return inner


@dataclass(frozen=True)
class Seq2SeqMasks:
    """The three attention masks of packed paired rows, in the form the model's kernel takes."""

    encoder: object
    decoder: object
    cross: object


def packed_seq2seq_masks(model, input_segments: torch.Tensor, target_segments: torch.Tensor,
                         dtype: torch.dtype = torch.float32) -> Seq2SeqMasks:
    """Masks of packed rows built by ``transformers``' own mask functions with our segment rules:
    encoder bidirectional within an input segment, decoder causal within a target segment,
    cross-attention from a target segment to its input segment (:func:`cross_segment`).

    >>> from transformers import T5Config, T5ForConditionalGeneration
    >>> hf = T5ForConditionalGeneration(T5Config(vocab_size=8, d_model=8, d_kv=2, d_ff=8, num_layers=1,
    ...     num_heads=4, attn_implementation="sdpa"))
    >>> m = packed_seq2seq_masks(hf, torch.tensor([[1, 1, 2]]), torch.tensor([[1, 2, 2]]))
    >>> m.encoder[0, 0].int().tolist(), m.decoder[0, 0].int().tolist(), m.cross[0, 0].int().tolist()
    ([[1, 1, 0], [1, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 1, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1], [0, 0, 1]])
    """
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    batch, n_in = input_segments.shape
    n_tg = target_segments.shape[1]
    # (the builders read only the batch size, lengths, dtype and device of these)
    in_shape = torch.empty(batch, n_in, 0, dtype=dtype, device=input_segments.device)
    tg_shape = torch.empty(batch, n_tg, 0, dtype=dtype, device=target_segments.device)
    encoder = create_bidirectional_mask(config=model.encoder.config, inputs_embeds=in_shape,
                                        attention_mask=None, and_mask_function=same_segment(input_segments))
    decoder = create_causal_mask(config=model.decoder.config, inputs_embeds=tg_shape, attention_mask=None,
                                 cache=None, and_mask_function=same_segment(target_segments))
    cross = create_bidirectional_mask(config=model.decoder.config, inputs_embeds=tg_shape,
                                      attention_mask=None, encoder_hidden_states=in_shape,
                                      and_mask_function=cross_segment(target_segments, input_segments))
    return Seq2SeqMasks(encoder, decoder, cross)


def prompt_cross(target_segments: torch.Tensor, input_real: torch.Tensor):
    """The ``and_mask_function`` of cross-attention when every target segment of a row belongs to
    the row's one prompt: a target token sees the prompt's real (unpadded) tokens; a padding target
    token (segment 0) sees every input token, so no row of the mask is empty."""

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        return input_real[batch_idx, kv_idx] | (target_segments[batch_idx, q_idx] == 0)

    return inner


def option_masks(model, input_real: torch.Tensor, target_segments: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> tuple[object, object]:
    """(decoder mask, cross mask) of rows that hold all options of one prompt as target segments:
    causal within an option, every option against the whole (real) prompt.

    >>> from transformers import T5Config, T5ForConditionalGeneration
    >>> hf = T5ForConditionalGeneration(T5Config(vocab_size=8, d_model=8, d_kv=2, d_ff=8, num_layers=1,
    ...     num_heads=4, attn_implementation="sdpa"))
    >>> dec, cross = option_masks(hf, torch.tensor([[True, True, False]]), torch.tensor([[1, 1, 2]]))
    >>> dec[0, 0].int().tolist(), cross[0, 0].int().tolist()
    ([[1, 0, 0], [1, 1, 0], [0, 0, 1]], [[1, 1, 0], [1, 1, 0], [1, 1, 0]])
    """
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    batch, n_in = input_real.shape
    n_tg = target_segments.shape[1]
    in_shape = torch.empty(batch, n_in, 0, dtype=dtype, device=input_real.device)
    tg_shape = torch.empty(batch, n_tg, 0, dtype=dtype, device=target_segments.device)
    decoder = create_causal_mask(config=model.decoder.config, inputs_embeds=tg_shape, attention_mask=None,
                                 cache=None, and_mask_function=same_segment(target_segments))
    cross = create_bidirectional_mask(config=model.decoder.config, inputs_embeds=tg_shape,
                                      attention_mask=None, encoder_hidden_states=in_shape,
                                      and_mask_function=prompt_cross(target_segments, input_real.bool()))
    return decoder, cross


def run_stack(stack: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor, mask,
              encoder_hidden: torch.Tensor | None = None, cross_mask=None) -> torch.Tensor:
    """``T5Stack.forward`` on packed rows: the library's embedding, blocks and norms, each block
    given our ``mask`` and the relative position bias of ``positions`` (computed where a block owns
    a ``relative_attention_bias``, block 0 in T5 and mT5, and shared by the blocks after it, as the
    stack does; in umT5 every block's own, :func:`per_example_bias`). Returns the final hidden states."""
    hidden = stack.dropout(stack.embed_tokens(input_ids))
    if stack.config.model_type == "umt5":
        for block in stack.block:
            with per_example_bias(block.layer[0].SelfAttention, positions):
                hidden = block(hidden, mask, encoder_hidden, encoder_attention_mask=cross_mask, cache=None)
        return stack.dropout(stack.final_layer_norm(hidden))
    bias = None
    for block in stack.block:
        attention = block.layer[0].SelfAttention
        if attention.has_relative_attention_bias:
            bias = relative_bias(attention, positions, positions)
        hidden, _, _ = block(hidden, mask, bias, encoder_hidden, cross_mask, None, cache=None)
    return stack.dropout(stack.final_layer_norm(hidden))


def lm_logits(model: nn.Module, decoder_hidden: torch.Tensor) -> torch.Tensor:
    """What the model's own ``forward`` does to the decoder's output: T5's ``d_model ** -0.5``
    scaling where ``config.scale_decoder_outputs`` (original T5, tied embeddings), then ``lm_head``."""
    if getattr(model.config, "scale_decoder_outputs", False):
        decoder_hidden = decoder_hidden * (model.config.d_model ** -0.5)
    return model.get_output_embeddings()(decoder_hidden)


class PackedSeq2SeqLM(nn.Module):
    """A ``transformers`` T5-family encoder-decoder trained on packed paired rows: ``forward``
    returns the cross-entropy of every target token where ``loss_mask``, in row-major order, in
    float32. Only those decoder states are projected onto the vocabulary.

    ``self.model`` is the wrapped model itself (export it, not the wrapper)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_supported(model.config)
        self.model = model
        self.start = start_token(model.config)

    def forward(self, inputs: torch.Tensor, inputs_positions: torch.Tensor, inputs_segment_ids: torch.Tensor,
                targets: torch.Tensor, targets_positions: torch.Tensor, targets_segment_ids: torch.Tensor,
                loss_mask: torch.Tensor) -> torch.Tensor:
        model = self.model
        dtype = model.get_input_embeddings().weight.dtype
        masks = packed_seq2seq_masks(model, inputs_segment_ids, targets_segment_ids, dtype)
        encoded = run_stack(model.encoder, inputs, inputs_positions, masks.encoder)
        decoded = run_stack(model.decoder, decoder_inputs(targets, targets_positions, self.start),
                            targets_positions, masks.decoder, encoded, masks.cross)
        valid = loss_mask.bool() & (targets_segment_ids > 0)
        logits = lm_logits(model, decoded[valid])
        return F.cross_entropy(logits.float(), targets[valid].long(), reduction="none")
