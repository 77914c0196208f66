"""Rank classification and generation on `transformers` models, against hand-built scorers, one
plain forward pass per option, and `transformers`' own `generate`."""

import numpy as np
import pytest
import torch
import transformers as T

from flanpipe.core.eval.scoring import (
    HEAD_ONLY_TYPES,
    AttentionKinds,
    generate,
    score_options,
    score_per_option,
    shared_extension_supported,
)

V = 64
TINY = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=None,
            eos_token_id=1)
WINDOW = 5  # shorter than most test sequences, so a sliding-window layer sees less than a full one


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_configs() -> dict:
    """One tiny config per supported architecture; the sliding-window ones with a window of 5."""
    neox = {k: v for k, v in TINY.items() if k != "num_key_value_heads"}
    return {
        "llama": T.LlamaConfig(**TINY),
        "llama3_rope_scaling": T.LlamaConfig(**TINY, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        "mistral": T.MistralConfig(**TINY, sliding_window=WINDOW),
        "qwen2": T.Qwen2Config(**TINY, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
        "qwen3": T.Qwen3Config(**TINY, head_dim=8, use_sliding_window=True, sliding_window=WINDOW,
                               max_window_layers=1),
        "gemma2": T.Gemma2Config(**TINY, head_dim=8, sliding_window=WINDOW),
        "gemma3": T.Gemma3TextConfig(**TINY, head_dim=8, sliding_window=WINDOW, sliding_window_pattern=2),
        "gpt_neox": T.GPTNeoXConfig(**neox, rotary_pct=0.5),
        "olmo2": T.Olmo2Config(**TINY),
        "phi3": T.Phi3Config(**{**TINY, "num_key_value_heads": 4}, sliding_window=WINDOW),
    }


def tiny_model(config, seed: int = 0) -> T.PreTrainedModel:
    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(config).double().eval()


def random_requests(seed: int, n: int, vocab: int = V):
    """Prompts of 1-17 tokens (most longer than the window) with 1-4 options of 1-8 tokens."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, vocab, rng.integers(1, 18)).tolist() for _ in range(n)]
    options = [[rng.integers(3, vocab, rng.integers(1, 9)).tolist() for _ in range(rng.integers(1, 5))]
               for _ in prompts]
    return prompts, options


def one_forward_per_option(model, prompt: list[int], option: list[int]) -> float:
    """The reference: prompt + option as one sequence, the model's own forward pass, no cache."""
    with torch.no_grad():
        logp = model(torch.tensor([prompt + option])).logits.log_softmax(-1)[0]
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(option)))


@pytest.mark.parametrize("arch", list(tiny_configs()))
def test_prefix_shared_scores_equal_one_forward_per_option(arch):
    model = tiny_model(tiny_configs()[arch])
    assert shared_extension_supported(model)
    prompts, options = random_requests(1, 9)
    got = score_options(model, prompts, options, max_batch_tokens=60, method="shared")
    # float64 weights; eager attention (Gemma 2's) takes its softmax in float32
    atol = 1e-6 if model.config._attn_implementation == "eager" else 1e-10
    for p, opts, scores in zip(prompts, options, got, strict=True):
        expected = [one_forward_per_option(model, p, o) for o in opts]
        np.testing.assert_allclose(scores, expected, rtol=0, atol=atol)
        assert int(np.argmax(scores)) == int(np.argmax(expected))


def test_other_architectures_project_every_position_through_their_own_forward():
    """Granite scales its logits (``logits_scaling``), which a bare output embedding would miss: a
    type outside HEAD_ONLY_TYPES is scored from its own forward's logits, still prefix-shared."""
    model = tiny_model(T.GraniteConfig(**TINY, logits_scaling=4.0))
    assert model.config.model_type not in HEAD_ONLY_TYPES and shared_extension_supported(model)
    prompts, options = random_requests(4, 6)
    got = score_options(model, prompts, options, method="shared")
    for p, opts, scores in zip(prompts, options, got, strict=True):
        expected = [one_forward_per_option(model, p, o) for o in opts]
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-10)


def test_the_window_changes_the_scores_it_is_checked_on():
    """The sliding-window cases test something: the same weights with a window too wide to bite
    score the test's requests differently."""
    narrow = tiny_model(tiny_configs()["mistral"])
    wide = tiny_model(T.MistralConfig(**TINY, sliding_window=1_000))
    wide.load_state_dict(narrow.state_dict())
    prompts, options = random_requests(1, 9)
    a = np.concatenate(score_options(narrow, prompts, options))
    b = np.concatenate(score_options(wide, prompts, options))
    assert np.abs(a - b).max() > 1e-3
    assert AttentionKinds.of(narrow.config) == AttentionKinds(None, WINDOW)
    qwen = AttentionKinds.of(tiny_configs()["qwen2"])
    assert qwen == AttentionKinds(("full_attention", "sliding_attention"), WINDOW)


def test_scores_do_not_depend_on_the_batch_nor_the_method():
    model = tiny_model(tiny_configs()["qwen3"])
    prompts, options = random_requests(2, 10)
    alone = [score_options(model, [p], [o])[0] for p, o in zip(prompts, options, strict=True)]
    together = score_options(model, prompts, options)
    plain = score_per_option(model, prompts, options, max_batch_tokens=50)
    for a, b, c in zip(alone, together, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)


def test_float32_scores_agree_with_float64():
    model = tiny_model(tiny_configs()["llama"])
    prompts, options = random_requests(3, 6)
    exact = score_options(model, prompts, options)
    single = score_options(model.float(), prompts, options)
    for a, b in zip(exact, single, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def bigram_model(table: np.ndarray) -> T.LlamaForCausalLM:
    """A Llama whose next-token logits after token ``i`` are exactly ``table[i]``: attention and MLP
    write nothing, the embedding is one-hot, so the final RMSNorm gives ``sqrt(V) * e_i`` and the head
    ``table.T / sqrt(V)`` maps it to ``table[i]``."""
    n = table.shape[0]
    config = T.LlamaConfig(vocab_size=n, hidden_size=n, intermediate_size=4, num_hidden_layers=1,
                           num_attention_heads=1, rms_norm_eps=0.0, tie_word_embeddings=False,
                           pad_token_id=0, bos_token_id=None, eos_token_id=1)
    model = T.LlamaForCausalLM(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(n, dtype=torch.float64))
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(torch.as_tensor(table.T / np.sqrt(n)))
    return model.eval()


def hand_score(table: np.ndarray, prompt: list[int], option: list[int]) -> float:
    """Sum of log softmax(table[previous token])[token] over the option, by hand."""
    logp = table - np.log(np.exp(table).sum(axis=1, keepdims=True))
    prev, total = prompt[-1], 0.0
    for tok in option:
        total += logp[prev, tok]
        prev = tok
    return total


def test_rank_classification_picks_the_option_a_hand_built_scorer_picks():
    rng = np.random.default_rng(0)
    table = rng.normal(0, 3, (12, 12))
    model = bigram_model(table)
    prompts = [[4, 5, 6], [7], [3, 3, 9, 10, 2]]
    options = [[[1], [2, 3], [8, 8, 8]], [[5, 1], [6, 1]], [[11], [10], [4, 5, 6, 7]]]
    got = score_options(model, prompts, options)
    for p, opts, scores in zip(prompts, options, got, strict=True):
        expected = [hand_score(table, p, o) for o in opts]
        # Llama's RMSNorm normalises in float32, whatever the weights' dtype
        np.testing.assert_allclose(scores, expected, rtol=0, atol=2e-6)
        assert int(np.argmax(scores)) == int(np.argmax(expected))


def test_a_planted_bigram_decides_the_choice():
    table = np.zeros((12, 12))
    table[6, 8] = 10.0  # after token 6, token 8 is near certain
    scores = score_options(bigram_model(table), [[4, 5, 6]], [[[7, 1], [8, 1], [9, 1]]])[0]
    assert int(np.argmax(scores)) == 1
    assert scores[0] == pytest.approx(scores[2])  # the other two options are alike to the model


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "gpt_neox"])
def test_greedy_generation_equals_transformers_generate(arch):
    model = tiny_model(tiny_configs()[arch], seed=3)
    prompts, _ = random_requests(3, 7)
    got = generate(model, prompts, max_new_tokens=9, eos_id=1, max_batch_tokens=40)
    for p, new in zip(prompts, got, strict=True):
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=9, do_sample=False, eos_token_id=1, pad_token_id=0)
        ref = out[0, len(p):].tolist()
        assert new == (ref[:ref.index(1)] if 1 in ref else ref)


def test_batched_generation_equals_one_prompt_at_a_time_with_transformers():
    """The fallback for kernels without 4D masks (``model.generate`` per prompt) decodes the same
    greedy text, and samples only among the top-k."""
    model = tiny_model(tiny_configs()["mistral"], seed=4)
    prompts, _ = random_requests(5, 5)
    greedy = generate(model, prompts, max_new_tokens=6, eos_id=[1, 2], method="one_by_one")
    assert greedy == generate(model, prompts, max_new_tokens=6, eos_id=[1, 2], method="shared")
    sampled = generate(bigram_model(top_two_table()), [[2]] * 6, 5, eos_id=1, temperature=1.0, top_k=2,
                       seed=7, method="one_by_one")
    # 30 draws: with top_k ignored, all 30 fall on 4 or 6 with probability 0.377 ** 30 = 1.9e-13
    assert {t for row in sampled for t in row} == {4, 6}


def test_generation_stops_at_any_eos():
    table = np.zeros((12, 12))
    table[5, 7] = table[7, 1] = table[8, 2] = 20.0  # 5 -> 7 -> EOS (1); 8 -> 2
    model = bigram_model(table)
    assert generate(model, [[3, 5]], max_new_tokens=10, eos_id=1) == [[7]]
    assert generate(model, [[3, 8], [5]], max_new_tokens=10, eos_id=[1, 2]) == [[], [7]]


@pytest.mark.parametrize("method", ["shared", "one_by_one"])
def test_generation_never_emits_ids_past_the_tokenizer(method):
    """A padded embedding's extra rows (ids 10 and 11 here) are never generated."""
    table = np.zeros((12, 12))
    table[:, 11] = 30.0
    table[:, 5] = 20.0
    model = bigram_model(table)
    assert generate(model, [[3]], 3, eos_id=1, method=method) == [[11, 11, 11]]
    assert generate(model, [[3]], 3, eos_id=1, method=method, vocab_limit=10) == [[5, 5, 5]]


def top_two_table() -> np.ndarray:
    """Bigram logits whose top 2 (ids 4 and 6, logit 1) hold little of the mass: after any token
    the softmax gives them e / (2e + 9) = 0.188 each, and the other nine ids 1 / (2e + 9) = 0.069
    each, 0.623 together. EOS (id 1, logit -30: 6e-15) is never drawn, so every row runs its length.
    Sampling with top_k=2 draws 4 or 6, each with probability 1/2; with top_k ignored a draw falls
    on 4 or 6 with probability 0.377 only."""
    table = np.zeros((12, 12))
    table[:, 4] = table[:, 6] = 1.0
    table[:, 1] = -30.0
    return table


def test_sampling_is_seeded_and_top_k_limits_the_choice():
    model = bigram_model(top_two_table())
    prompts = [[2]] * 20
    a = generate(model, prompts, 5, eos_id=1, temperature=1.0, top_k=2, seed=7)
    assert a == generate(model, prompts, 5, eos_id=1, temperature=1.0, top_k=2, seed=7)
    assert [len(row) for row in a] == [5] * 20
    # top-2 only: with top_k ignored, all 100 draws fall on 4 or 6 with probability
    # 0.377 ** 100 = 4e-43; both are drawn (only one of them: 2 * 0.5 ** 100 = 2e-30)
    assert {t for row in a for t in row} == {4, 6}
    assert a != generate(model, prompts, 5, eos_id=1, temperature=1.0, top_k=2, seed=8)


def test_bad_requests_are_refused():
    model = tiny_model(tiny_configs()["llama"])
    with pytest.raises(ValueError, match="every option one token"):
        score_options(model, [[4, 5]], [[[6], []]])
    with pytest.raises(ValueError, match="2 prompts but 1 option lists"):
        score_options(model, [[4], [5]], [[[6]]])
    with pytest.raises(ValueError, match="method 'fast': allowed are auto, shared, per_option"):
        score_options(model, [[4]], [[[6]]], method="fast")
