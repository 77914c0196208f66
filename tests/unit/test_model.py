"""The model path: packed examples cannot see each other in any of the `transformers` architectures
flanpipe trains, the loss counts target tokens only, and FlexAttention agrees with SDPA."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flanpipe.core.config import ModelSpec
from flanpipe.core.model.causal import PackedCausalLM, predicted
from flanpipe.core.model.checkpoint import build_model
from flanpipe.core.train.optim import Adafactor, optimizer_state_bytes
from flanpipe.stages.train import BatchPlan, step_rows

VOCAB = 97
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500_000.0}
# every architecture of issue 14, tiny; sliding windows of 4 tokens, shorter than the examples
ARCHITECTURES = {
    "llama": ("llama", {}),
    "llama3-rope-scaling": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "mistral": ("mistral", {"sliding_window": 4}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "gemma2": ("gemma2", {"sliding_window": 4}),
    "gemma3": ("gemma3", {"sliding_window": 4}),
    "gpt_neox": ("gpt_neox", {}),
    "olmo2": ("olmo2", {}),
    "phi3": ("phi3", {"sliding_window": 4}),
}


def tiny_model(name: str, attention: str = "sdpa", seed: int = 0):
    architecture, hf_config = ARCHITECTURES[name]
    spec = ModelSpec(architecture=architecture, hidden_size=32, num_layers=2, num_heads=4,
                     num_kv_heads=None if architecture == "gpt_neox" else 2, hf_config=hf_config)
    torch.manual_seed(seed)
    return build_model(spec, VOCAB, 64, attention=attention).eval()


def example(n_in: int, n_tg: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (n_in,), generator=g), torch.randint(4, VOCAB, (n_tg,), generator=g)


EXAMPLES = [example(7, 3, 1), example(12, 5, 2), example(4, 2, 3)]


def packed_row(examples, width):
    """(tokens, segment ids, positions, loss mask) of one row holding ``examples`` then padding."""
    tokens, seg, pos, mask = (torch.zeros(width, dtype=torch.long) for _ in range(4))
    o = 0
    for s, (x, y) in enumerate(examples, 1):
        n = len(x) + len(y)
        tokens[o:o + n] = torch.cat([x, y])
        seg[o:o + n], pos[o:o + n] = s, torch.arange(n)
        mask[o + len(x):o + n] = 1
        o += n
    return tokens[None], seg[None], pos[None], mask[None]


def packed_losses(model, examples, width=40) -> list[float]:
    """Each example's summed target loss, all of them packed in one row (PackedCausalLM)."""
    tokens, seg, pos, mask = packed_row(examples, width)
    with torch.no_grad():
        nll = PackedCausalLM(model)(tokens, pos, seg, mask)
    owner = seg[:, 1:][predicted(seg, mask)]  # the segment of each predicted target
    return [nll[owner == s].sum().item() for s in range(1, len(examples) + 1)]


def alone_losses(model, examples) -> list[float]:
    """Each example run alone through the model's own forward (its own masks), the cross-entropy
    of its targets computed here from the logits."""
    out = []
    with torch.no_grad():
        for x, y in examples:
            logits = model(input_ids=torch.cat([x, y])[None]).logits[0]
            out.append(F.cross_entropy(logits[len(x) - 1:-1].float(), y, reduction="sum").item())
    return out


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_an_examples_loss_is_the_same_packed_or_alone(name):
    model = tiny_model(name)
    assert packed_losses(model, EXAMPLES) == pytest.approx(alone_losses(model, EXAMPLES), rel=1e-5, abs=1e-5)


def test_without_the_segment_mask_examples_would_leak():
    """The packed test can fail: plain causal attention over the row changes the later examples."""
    model = tiny_model("llama")
    tokens, seg, pos, mask = packed_row(EXAMPLES, 40)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[0]  # one causal sequence, positions 0..39
    x, y = EXAMPLES[1]
    start = len(EXAMPLES[0][0]) + len(EXAMPLES[0][1])
    leaky = F.cross_entropy(logits[start + len(x) - 1:start + len(x) + len(y) - 1], y, reduction="sum")
    assert leaky.item() != pytest.approx(alone_losses(model, EXAMPLES)[1], rel=1e-3)


def test_the_sliding_window_matters_in_these_examples():
    """Gemma 3 with a 4-token window scores a 17-token example differently from a full window, so
    the packed test checks that the packed mask keeps the window."""
    windowed = tiny_model("gemma3")
    full = tiny_model("gemma3")
    full.config.sliding_window = 64
    assert alone_losses(windowed, EXAMPLES[1:2]) != pytest.approx(alone_losses(full, EXAMPLES[1:2]), rel=1e-3)


def test_only_target_tokens_are_scored_and_the_sum_matches_transformers_loss():
    model = tiny_model("qwen3")
    x, y = EXAMPLES[1]
    tokens, seg, pos, mask = packed_row([(x, y)], len(x) + len(y))
    with torch.no_grad():
        nll = PackedCausalLM(model)(tokens, pos, seg, mask)
        labels = torch.cat([torch.full_like(x, -100), y])[None]  # transformers' own shifted mean loss
        reference = model(input_ids=tokens, labels=labels).loss * len(y)
    assert nll.shape == (len(y),)
    assert nll.sum().item() == pytest.approx(reference.item(), rel=1e-5)


def test_gemma_final_soft_capping_is_applied():
    """A cap small enough to change these logits: the packed losses follow the model's own capped
    forward, and differ from uncapped ones."""
    model = tiny_model("gemma2")
    model.config.final_logit_softcapping = None
    uncapped = packed_losses(model, EXAMPLES)
    model.config.final_logit_softcapping = 0.01
    capped = packed_losses(model, EXAMPLES)
    assert capped == pytest.approx(alone_losses(model, EXAMPLES), rel=1e-5, abs=1e-5)
    assert capped != pytest.approx(uncapped, rel=1e-3)


def test_activation_checkpointing_gives_the_same_gradients():
    from flanpipe.core.model.checkpoint import build_model as build

    grads = []
    for recompute in (False, True):
        spec = ModelSpec(architecture="qwen3", hidden_size=32, num_layers=2, num_heads=4,
                         activation_checkpointing=recompute)
        torch.manual_seed(0)
        model = build(spec, VOCAB, 64).train()
        assert model.is_gradient_checkpointing == recompute
        tokens, seg, pos, mask = packed_row(EXAMPLES, 40)
        PackedCausalLM(model)(tokens, pos, seg, mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_flex_attention_block_masks_equal_sdpa_and_keep_examples_apart():
    """FlexAttention (the GPU default) runs here on CPU, forward only: Gemma 3 with sliding and
    full layers, one block mask each."""
    sdpa = tiny_model("gemma3", "sdpa")
    flex = tiny_model("gemma3", "flex_attention")
    assert flex.config._attn_implementation == "flex_attention"
    alone = alone_losses(sdpa, EXAMPLES)
    assert packed_losses(flex, EXAMPLES, 48) == pytest.approx(alone, rel=1e-5, abs=1e-5)
    assert packed_losses(sdpa, EXAMPLES, 48) == pytest.approx(alone, rel=1e-5, abs=1e-5)


def test_adafactor_matches_transformers_absolute_lr_adafactor():
    from transformers.optimization import Adafactor as Reference

    torch.manual_seed(1)
    ours_p = [torch.randn(8, 6, requires_grad=True), torch.randn(5, requires_grad=True)]
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = Adafactor(ours_p, lr=1e-2)
    ref = Reference(ref_p, lr=1e-2, scale_parameter=False, relative_step=False, warmup_init=False)
    for _ in range(5):
        for a, b in zip(ours_p, ref_p, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        ours.step()
        ref.step()
    for a, b in zip(ours_p, ref_p, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # factored: a row and a column vector for the matrix, a full vector for the bias, plus step counters
    assert optimizer_state_bytes(ours) == 4 * (8 + 6 + 5)


def test_each_epoch_visits_every_row_once_and_steps_are_reproducible():
    plan = BatchPlan.from_tokens(4096, 1280, 1, 2)
    assert (plan.rows_per_step, plan.accumulation) == (4, 2)
    rows = np.concatenate([step_rows(s, plan, 10, seed=3) for s in range(5)])  # 20 rows = 2 epochs
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert (step_rows(3, plan, 10, seed=3) == rows[12:16]).all()
    assert not (step_rows(3, plan, 10, seed=4) == rows[12:16]).all()
