"""The decoder-only transformer that flanpipe trains: Llama's architecture, with packed sequences.

The module and parameter names are those of Hugging Face's ``LlamaForCausalLM`` (``model.layers.0.
self_attn.q_proj.weight`` ...), so a trained model is saved as a Llama checkpoint that
``transformers`` loads with no flanpipe code, and a local Llama checkpoint loads into this model.

Packed rows hold several examples. Attention is causal *within a segment only*: a token attends to
earlier tokens that have its segment id, and positions restart at 0 for every example, so an
example's loss is the same packed or alone. On CPU the mask is a boolean tensor given to
``scaled_dot_product_attention``; on GPU, FlexAttention builds a block mask from the segment ids and
skips the blocks it masks, without materialising a ``T x T`` mask.

>>> cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4)
>>> model = FlanLM(cfg)
>>> tokens = torch.tensor([[5, 6, 7, 8, 0, 0]])
>>> segments = torch.tensor([[1, 1, 2, 2, 0, 0]]); positions = torch.tensor([[0, 1, 0, 1, 0, 0]])
>>> model(tokens, positions, segment_mask(segments)).shape
torch.Size([1, 6, 64])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


def predicted(segment_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Which next tokens the loss counts, (batch, tokens - 1): token ``t + 1`` when it is a target
    token of the same segment as token ``t``.

    >>> predicted(torch.tensor([[1, 1, 1, 2, 2]]), torch.tensor([[0, 1, 1, 0, 1]])).int().tolist()
    [[1, 1, 0, 1]]
    """
    return loss_mask[:, 1:].bool() & (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)


def loss_sums(logits: torch.Tensor, tokens: torch.Tensor, segment_ids: torch.Tensor,
              loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of predicted tokens) over the target tokens of packed rows:
    the logits at ``t`` predict token ``t + 1`` (see :func:`predicted`)."""
    labels = tokens[:, 1:].long()
    valid = predicted(segment_ids, loss_mask)
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          reduction="none").view_as(labels)
    return (nll * valid).sum(), valid.sum()
