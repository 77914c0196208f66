"""The train benchmark's synthetic mixtures are packed rows the trainer reads: every example of
the decoder rows and of the paired rows ends with its EOS, holds no EOS before it, and the two
mixtures hold examples of the same length distribution."""

import numpy as np

from bench.train import LI, LT, synthetic_packed, synthetic_paired
from flanpipe.core.tokens.shards import PackedShards, unpack_row


def examples(folder, model_kind):
    data = PackedShards(folder)
    assert data.model_kind == model_kind and len(data) == 16
    return [pair for row in data.take(np.arange(len(data))) for pair in unpack_row(row)]


def test_the_decoder_and_the_paired_mixtures_hold_whole_examples(tmp_path):
    decoder = examples(synthetic_packed(tmp_path / "decoder", 16), "decoder_only")
    paired = examples(synthetic_paired(tmp_path / "paired", 16), "encoder_decoder")
    for pairs in (decoder, paired):
        assert len(pairs) > 16  # several examples a row
        for x, y in pairs:
            assert x[-1] == 1 and y[-1] == 1 and 1 not in x[:-1] and 1 not in y[:-1]
            assert len(x) <= LI and len(y) <= LT
    # the same generator of sizes: mean input lengths within 25% of each other
    means = [np.mean([len(x) for x, _ in pairs]) for pairs in (decoder, paired)]
    assert abs(means[0] - means[1]) < 0.25 * means[0]


def test_one_printer_shows_a_run_or_two_side_by_side(capsys):
    """print_train: a single run's tokens/s and MFU; two runs (the peer first) each figure of both and
    the ratio ours / peer (worked by hand here), the memory under the name of the figure both have."""
    from bench.train import compare, print_train

    run = {"size": "tiny", "architecture": "llama", "parameters": 4_202_816, "device": "cpu",
           "precision": "fp32", "attention": "sdpa", "zero_stage": 3, "optimizer": "adafactor",
           "tokens_per_step": 1280, "tokens_per_s": 3126.0, "mfu": 0.0004, "peak_memory_bytes_rank0": None,
           "peak_rss_bytes": 936 * 2**20, "optimizer_state_bytes_rank0": 268_032,
           "adamw_state_bytes_rank0": 2**25}
    run["trainable_parameters"] = run["parameters"]
    print_train(run)
    assert "3,126 tokens/s, MFU 0.0% of the H100's" in capsys.readouterr().out
    t5 = run | {"architecture": "t5", "parameters": 2_294_784, "trainable_parameters": 2_294_784,
                "tokens_per_s": 1111.0, "peak_rss_bytes": 1165 * 2**20,
                "optimizer_state_bytes_rank0": 156_192}
    print_train(compare({"decoder": run, "t5": t5}))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-6].startswith("t5 beside decoder (the peer, same run): tiny, cpu fp32, ZeRO-3, adafactor")
    assert lines[-6].endswith("(decoder rows of 1280; paired rows of 1024 + 256)")
    assert lines[-5:] == ["  parameters: decoder 4.2M, t5 2.3M (0.546x)",  # 2,294,784 / 4,202,816
                          "  trainable parameters: decoder 4.20M, t5 2.29M (0.546x)",
                          "  tokens/s: decoder 3,126, t5 1,111 (0.355x)",  # 1,111 / 3,126
                          "  peak resident memory: decoder 936 MiB, t5 1,165 MiB (1.24x)",
                          "  optimizer state on rank 0: decoder 0.3 MiB, t5 0.1 MiB (0.583x)"]
