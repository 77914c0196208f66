"""The checkpoint benchmark's load under ZeRO-3 (``python -m bench.checkpoint load`` on 2 ranks): its
per-rank figures, and the checkpoint seam's partitioned load and gathered export, bit for bit."""

import json
import subprocess
import sys

import torch

from flanpipe.core.model.checkpoint import weight_files
from tests.conftest import REPO
from tests.unit.test_checkpoint import tensors


def test_zero3_loads_partitioned_on_two_ranks_and_exports_back_exactly(tmp_path):
    """A sharded checkpoint (tied embeddings, as SmolLM2's; an odd vocabulary so partitions are
    padded) loads under ZeRO-3 on 2 gloo ranks, each holding half, the output embedding tied to the
    input one (an untied copy would be left uninitialised: more parameters); the gathered export
    equals the source tensor for tensor. The per-rank figures are those ``bench/checkpoint.py load``
    prints."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=72,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          tie_word_embeddings=True))
    assert source.lm_head.weight is source.model.embed_tokens.weight
    source.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    assert len(weight_files(tmp_path / "src")) > 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "bench.checkpoint", "load", "--folder", str(tmp_path / "src"),
           "--export", str(tmp_path / "back")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    n = sum(p.numel() for p in source.parameters())
    assert [r["rank"] for r in rows] == [0, 1] and all(r["parameters"] == n for r in rows)
    # each rank holds half of every parameter (rounded up), not the model
    half = sum(-(-p.numel() // 2) for p in source.parameters()) * 4
    assert [r["partition_bytes"] for r in rows] == [half, half]
    original, back = tensors(tmp_path / "src"), tensors(tmp_path / "back")
    assert original.keys() == back.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, back[name]), name
