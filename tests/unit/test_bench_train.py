"""The train benchmark's synthetic mixtures are packed rows the trainer reads: every example of
the decoder rows and of the paired rows ends with its EOS, holds no EOS before it, and the two
mixtures hold examples of the same length distribution."""

import numpy as np

from flanpipe.bench.train import LI, LT, synthetic_packed, synthetic_paired
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
