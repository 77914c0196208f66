"""The eval benchmark end to end on a tiny model: ours and lm-eval's HFLM score the same requests alike."""

from bench.eval import bench_eval


def test_bench_eval_scores_agree_with_lm_eval_on_every_option(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = bench_eval(prompts=4, options=3, vocab=1_000, hidden=32, layers=1, heads=2, batch_requests=6,
                   rounds=1, threads=1)
    for case in ("multi", "single"):
        c = r[case]
        assert c["requests"] == 4 * 3
        assert c["choices_agree"] == 4
        assert c["max_abs_diff"] < 1e-4
    assert r["multi"]["option_tokens"]["min"] >= 5
    assert r["single"]["option_tokens"]["max"] == 1


def test_bench_eval_on_an_encoder_decoder_agrees_with_lm_eval_seq2seq(monkeypatch):
    """`--architecture t5`: ours encodes each prompt once; HFLM's seq2seq backend runs encoder and
    decoder per request; every option scores alike and every choice is the same."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = bench_eval(prompts=4, options=3, vocab=1_000, hidden=32, layers=1, heads=2, batch_requests=6,
                   rounds=1, threads=1, architecture="t5")
    assert r["model"] == "T5ForConditionalGeneration"
    for case in ("multi", "single"):
        c = r[case]
        assert c["requests"] == 4 * 3 and c["choices_agree"] == 4
        assert c["max_abs_diff"] < 1e-4
