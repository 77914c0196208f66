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

import math
from dataclasses import asdict, dataclass

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
    every predicted target token (see :func:`predicted`), in row-major order, in float32.

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
        return F.cross_entropy(logits.float(), tokens[:, 1:][valid].long(), reduction="none")


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


# --- legacy: flanpipe's own Llama copy, kept importable until evaluation and scoring use the ------
# --- transformers models of flanpipe.checkpoint (flanpipe/scoring.py, flanpipe/evaluate.py) -----

@dataclass
class ModelConfig:
    """A Llama-style decoder. The defaults are the demo's tiny model; ``train.model`` in config sets them."""

    vocab_size: int
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # grouped-query attention; None: as many as num_heads
    intermediate_size: int | None = None  # None: 8/3 * hidden, rounded up to a multiple of 64
    max_position_embeddings: int = 4096
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"train.model.hidden_size ({self.hidden_size}) must be a multiple of "
                             f"train.model.num_heads ({self.num_heads})")
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"train.model.num_heads ({self.num_heads}) must be a multiple of "
                             f"train.model.num_kv_heads ({self.num_kv_heads})")
        if self.intermediate_size is None:
            self.intermediate_size = 64 * math.ceil(8 * self.hidden_size / 3 / 64)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def num_parameters(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_kv_heads * self.head_dim
        layer = d * d * 2 + 2 * d * kv + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + d

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward): 6 per parameter in the matrix
        multiplies (embeddings left out), plus attention scores over a ``seq_len`` window, as in
        PaLM's MFU definition."""
        d = self.hidden_size
        matmul = self.num_parameters() - self.vocab_size * d * (0 if self.tie_word_embeddings else 1)
        matmul -= self.vocab_size * d  # the input embedding is a lookup
        return 6 * matmul + 12 * self.num_layers * d * seq_len

    def to_hf(self) -> dict:
        """The ``config.json`` of the equivalent ``LlamaForCausalLM``."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings, "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta, "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False, "mlp_bias": False, "initializer_range": self.init_std,
        }

    @classmethod
    def from_hf(cls, hf: dict) -> ModelConfig:
        """From a Llama ``config.json`` (other architectures are refused with the reason)."""
        if hf.get("model_type") != "llama":
            raise ValueError(f"model_type {hf.get('model_type')!r}: flanpipe trains Llama-architecture "
                             "checkpoints (model_type 'llama')")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise ValueError(f"{key}: checkpoints with biases are not supported")
        rope = hf.get("rope_parameters") or {}  # transformers 5 writes RoPE settings here
        if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            raise ValueError("rope_scaling: scaled RoPE is not supported")
        heads = hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
            raise ValueError("head_dim: must be hidden_size / num_attention_heads")
        return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                   num_layers=hf["num_hidden_layers"], num_heads=heads,
                   num_kv_heads=hf.get("num_key_value_heads", heads),
                   intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf.get("max_position_embeddings", 4096),
                   rope_theta=hf.get("rope_theta", rope.get("rope_theta", 10_000.0)),
                   rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                   tie_word_embeddings=hf.get("tie_word_embeddings", False),
                   init_std=hf.get("initializer_range", 0.02))

    def as_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer for the tokens run so far (inference only; training never
    builds one). Layer ``i`` appends along the token axis in :meth:`update`."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        """Cached tokens."""
        return self.keys[0].shape[2] if self.keys else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Norms and rotations run in float32 at least (bf16 is too coarse), float64 for a float64 model."""
    return torch.promote_types(x.dtype, torch.float32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(compute_dtype(x))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of ``x`` (batch, heads, tokens, head_dim) at per-token ``positions``
    (batch, tokens), in Llama's half-split convention."""
    half = x.shape[-1] // 2
    dtype = compute_dtype(x)
    inv_freq = 1.0 / theta ** (torch.arange(0, half, device=x.device, dtype=dtype) / half)
    angles = positions.to(dtype)[:, None, :, None] * inv_freq  # (batch, 1, tokens, half)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(dtype)[..., :half], x.to(dtype)[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """The boolean attention mask (batch, 1, tokens, tokens) of packed rows: causal, and only within
    a segment (padding, segment 0, attends to padding).

    >>> segment_mask(torch.tensor([[1, 1, 2]]))[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    t = segment_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal)[:, None]


def segment_block_mask(segment_ids: torch.Tensor):
    """FlexAttention's block mask for packed rows (GPU): the same rule as :func:`segment_mask`,
    evaluated per block; fully masked blocks are skipped."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, kv):
        return (segment_ids[b, q] == segment_ids[b, kv]) & (q >= kv)

    batch, t = segment_ids.shape
    return create_block_mask(mask_mod, batch, None, t, t, device=segment_ids.device)


_flex = None


def _flex_attention(q, k, v, block_mask, gqa: bool):
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        self.layer = layer  # this layer's slot in a KVCache
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask, cache: KVCache | None = None
                ) -> torch.Tensor:
        b, t, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        if cache is not None:  # inference: attend to the cached tokens too (mask: tokens x all keys)
            k, v = cache.update(self.layer, k, v)
        gqa = cfg.num_kv_heads != cfg.num_heads
        if isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:
            out = _flex_attention(q, k, v, mask, gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, positions, mask, cache: KVCache | None = None):
        x = x + self.self_attn(self.input_layernorm(x), positions, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class FlanLM(nn.Module):
    """Tokens -> next-token logits, for packed rows (``positions`` and a segment ``mask``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits of every token. With a ``cache`` (inference), the keys and values of ``tokens`` are
        appended to it and ``mask`` is ``(batch, 1, tokens, cached + tokens)``: the tokens attend to
        the cached ones, so a prompt run once serves every continuation of it."""
        return self.lm_head(self.hidden(tokens, positions, mask, cache))

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, mask,
               cache: KVCache | None = None) -> torch.Tensor:
        """The final normed hidden states (``forward`` without the vocabulary projection), so that
        inference projects only the positions it needs."""
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, positions, mask, cache)
        return self.model.norm(x)


def loss_sums(logits: torch.Tensor, tokens: torch.Tensor, segment_ids: torch.Tensor,
              loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of predicted tokens) over the target tokens of packed rows:
    the logits at ``t`` predict token ``t + 1`` (see :func:`predicted`)."""
    labels = tokens[:, 1:].long()
    valid = predicted(segment_ids, loss_mask)
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          reduction="none").view_as(labels)
    return (nll * valid).sum(), valid.sum()


def load_pretrained(path, vocab_size: int | None = None) -> tuple[FlanLM, ModelConfig]:
    """(legacy) A local Llama checkpoint loaded into :class:`FlanLM`."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    mcfg = ModelConfig.from_hf(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")))
    if vocab_size is not None and vocab_size > mcfg.vocab_size:
        raise ValueError(f"train.model.path: the tokenizer has {vocab_size} pieces, the checkpoint's "
                         f"embedding only {mcfg.vocab_size}: use the checkpoint's own tokenizer "
                         "(tokenize.tokenizer.source: file)")
    hf = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    model = FlanLM(mcfg)
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (mcfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match a Llama model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model, mcfg


def save_hf(state: dict[str, torch.Tensor], mcfg: ModelConfig, tokenizer, out, bf16: bool,
            special_ids: dict[str, int | None]) -> None:
    """(legacy) A :class:`FlanLM` state dict as a Llama checkpoint folder."""
    import json

    from safetensors.torch import save_file

    from flanpipe.io import atomic_dir
    from flanpipe.tokenizer import load_tokenizer

    if mcfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    ids = {f"{k.removesuffix('_id')}_token_id": v for k, v in special_ids.items()
           if k != "unk_id" and v is not None}
    hf_cfg = mcfg.to_hf() | {"torch_dtype": "bfloat16" if bf16 else "float32"} | ids
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, content in (("config.json", hf_cfg), ("generation_config.json", ids)):
            (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        load_tokenizer(tokenizer).save_pretrained(tmp)
