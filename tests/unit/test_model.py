"""The model: packed examples cannot see each other, and the weights are a Llama checkpoint's."""

import numpy as np
import pytest
import torch

from flanpipe.model import FlanLM, ModelConfig, loss_sums, segment_mask
from flanpipe.optim import Adafactor, optimizer_state_bytes
from flanpipe.train import BatchPlan, step_rows

CFG = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)


def example(n_in: int, n_tg: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 97, (n_in,), generator=g), torch.randint(4, 97, (n_tg,), generator=g)


def packed_row(examples, width):
    tokens, seg, pos, mask = (torch.zeros(width, dtype=torch.long) for _ in range(4))
    o = 0
    for s, (x, y) in enumerate(examples, 1):
        n = len(x) + len(y)
        tokens[o:o + n] = torch.cat([x, y])
        seg[o:o + n], pos[o:o + n] = s, torch.arange(n)
        mask[o + len(x):o + n] = 1
        o += n
    return tokens[None], seg[None], pos[None], mask[None]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlanLM(CFG).eval()


def per_example_losses(model, examples, width, masked=True):
    tokens, seg, pos, mask = packed_row(examples, width)
    attn = segment_mask(seg) if masked else torch.ones(1, 1, width, width, dtype=torch.bool).tril()
    logits = model(tokens, pos if masked else torch.arange(width)[None], attn)
    return [loss_sums(logits, tokens, seg * (seg == s), mask * (seg == s))[0].item()
            for s in range(1, len(examples) + 1)]


def test_an_examples_loss_is_the_same_packed_or_alone(model):
    examples = [example(7, 3, 1), example(12, 5, 2), example(4, 2, 3)]
    with torch.no_grad():
        packed = per_example_losses(model, examples, 40)
        alone = [per_example_losses(model, [e], len(e[0]) + len(e[1]))[0] for e in examples]
        leaky = per_example_losses(model, examples, 40, masked=False)  # plain causal attention
    assert packed == pytest.approx(alone, rel=1e-5, abs=1e-5)
    # without the mask, later examples see earlier ones
    assert leaky[1:] != pytest.approx(alone[1:], rel=1e-3)


def test_loss_counts_only_target_tokens(model):
    tokens, seg, pos, mask = packed_row([example(5, 3, 4)], 10)
    logits = model(tokens, pos, segment_mask(seg))
    _, count = loss_sums(logits, tokens, seg, mask)
    assert count.item() == 3  # the three target tokens; the first input token is never predicted


def test_weights_load_into_transformers_llama_with_identical_logits(model):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(**CFG.to_hf())).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    tokens = torch.randint(4, 97, (2, 16))
    with torch.no_grad():
        ours = model(tokens, torch.arange(16).expand(2, 16), segment_mask(torch.ones_like(tokens)))
        theirs = hf(tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert ModelConfig.from_hf(CFG.to_hf()) == CFG
    assert sum(p.numel() for p in model.parameters()) == CFG.num_parameters()


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


def test_a_local_llama_checkpoint_loads_into_our_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from flanpipe.train import load_pretrained

    torch.manual_seed(2)
    hf = LlamaForCausalLM(LlamaConfig(**CFG.to_hf())).eval()
    hf.save_pretrained(tmp_path / "ckpt")
    model, cfg = load_pretrained(tmp_path / "ckpt", vocab_size=97)
    tokens = torch.randint(4, 97, (1, 12))
    with torch.no_grad():
        ours = model.eval()(tokens, torch.arange(12)[None], segment_mask(torch.ones_like(tokens)))
        assert torch.allclose(ours, hf(tokens).logits, atol=1e-5)
    with pytest.raises(ValueError, match="use the checkpoint's own tokenizer"):
        load_pretrained(tmp_path / "ckpt", vocab_size=200)
    with pytest.raises(ValueError, match="Llama-architecture"):
        ModelConfig.from_hf({**CFG.to_hf(), "model_type": "gpt2"})
