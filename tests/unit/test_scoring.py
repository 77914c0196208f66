"""Rank classification and generation against hand-built and slow reference scorers."""

import numpy as np
import pytest
import torch

from flanpipe.model import FlanLM, ModelConfig, segment_mask
from flanpipe.scoring import generate, score_options

V = 12


def bigram_model(table: np.ndarray) -> FlanLM:
    """A FlanLM whose next-token logits after token ``i`` are exactly ``table[i]``: attention and MLP
    write nothing, the embedding is one-hot, so the final RMSNorm gives ``sqrt(V) * e_i`` and the head
    ``table.T / sqrt(V)`` maps it to ``table[i]``."""
    model = FlanLM(ModelConfig(vocab_size=V, hidden_size=V, num_layers=1, num_heads=1,
                               rms_norm_eps=0.0)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(V, dtype=torch.float64))
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(torch.as_tensor(table.T / np.sqrt(V)))
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
    table = rng.normal(0, 3, (V, V))
    model = bigram_model(table)
    prompts = [[4, 5, 6], [7], [3, 3, 9, 10, 2]]
    options = [[[1], [2, 3], [8, 8, 8]], [[5, 1], [6, 1]], [[11], [10], [4, 5, 6, 7]]]
    got = score_options(model, prompts, options)
    for p, opts, scores in zip(prompts, options, got, strict=True):
        expected = [hand_score(table, p, o) for o in opts]
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-10)
        assert int(np.argmax(scores)) == int(np.argmax(expected))


def test_a_planted_bigram_decides_the_choice():
    table = np.zeros((V, V))
    table[6, 8] = 10.0  # after token 6, token 8 is near certain
    model = bigram_model(table)
    scores = score_options(model, [[4, 5, 6]], [[[7, 1], [8, 1], [9, 1]]])[0]
    assert int(np.argmax(scores)) == 1
    assert scores[0] == pytest.approx(scores[2])  # the other two options are alike to the model


def random_model(seed: int = 0) -> FlanLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    return FlanLM(cfg).double().eval()


def slow_scores(model: FlanLM, prompt: list[int], option: list[int]) -> float:
    """The reference: the prompt and one option run together, from scratch, with a causal mask."""
    seq = torch.tensor([prompt + option])
    t = seq.shape[1]
    with torch.no_grad():
        logits = model(seq, torch.arange(t)[None], segment_mask(torch.ones(1, t, dtype=torch.long)))
    logp = logits.log_softmax(-1)[0]
    return float(sum(logp[len(prompt) - 1 + i, tok] for i, tok in enumerate(option)))


def random_requests(seed: int, n: int):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(4, 50, rng.integers(1, 15)).tolist() for _ in range(n)]
    options = [[rng.integers(4, 50, rng.integers(1, 6)).tolist() for _ in range(rng.integers(1, 5))]
               for _ in prompts]
    return prompts, options


@pytest.mark.parametrize("max_batch_tokens", [1, 40, 100_000])
def test_scores_equal_a_slow_reference(max_batch_tokens):
    model = random_model()
    prompts, options = random_requests(1, 12)
    got = score_options(model, prompts, options, max_batch_tokens=max_batch_tokens)
    for p, opts, scores in zip(prompts, options, got, strict=True):
        np.testing.assert_allclose(scores, [slow_scores(model, p, o) for o in opts], rtol=0, atol=1e-12)


def test_scores_do_not_depend_on_the_batch():
    model = random_model()
    prompts, options = random_requests(2, 10)
    alone = [score_options(model, [p], [o])[0] for p, o in zip(prompts, options, strict=True)]
    together = score_options(model, prompts, options)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def slow_greedy(model: FlanLM, prompt: list[int], n: int, eos: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        t = len(seq)
        with torch.no_grad():
            logits = model(torch.tensor([seq]), torch.arange(t)[None],
                           segment_mask(torch.ones(1, t, dtype=torch.long)))
        tok = int(logits[0, -1].argmax())
        if tok == eos:
            break
        seq.append(tok)
    return seq[len(prompt):]


def test_greedy_generation_equals_decoding_from_scratch():
    model = random_model(3)
    prompts, _ = random_requests(3, 9)
    got = generate(model, prompts, max_new_tokens=7, eos_id=1, max_batch_tokens=50)
    assert got == [slow_greedy(model, p, 7, 1) for p in prompts]


def test_generation_stops_at_eos():
    table = np.zeros((V, V))
    table[5, 7] = table[7, 1] = 20.0  # 5 -> 7 -> EOS
    out = generate(bigram_model(table), [[3, 5]], max_new_tokens=10, eos_id=1)
    assert out == [[7]]


def test_sampling_is_seeded_and_top_k_limits_the_choice():
    table = np.zeros((V, V))
    table[:, 4] = table[:, 6] = 5.0  # two likely tokens, the rest unlikely
    model = bigram_model(table)
    prompts = [[2]] * 20
    a = generate(model, prompts, 5, eos_id=1, temperature=0.9, top_k=2, seed=7)
    assert a == generate(model, prompts, 5, eos_id=1, temperature=0.9, top_k=2, seed=7)
    assert {t for row in a for t in row} == {4, 6}  # top-2 only; both are drawn
    assert a != generate(model, prompts, 5, eos_id=1, temperature=0.9, top_k=2, seed=8)


def test_bad_requests_are_refused():
    model = random_model()
    with pytest.raises(ValueError, match="every option one token"):
        score_options(model, [[4, 5]], [[[6], []]])
    with pytest.raises(ValueError, match="2 prompts but 1 option lists"):
        score_options(model, [[4], [5]], [[[6]]])
