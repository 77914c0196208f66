"""Adafactor against transformers' Adafactor, whole tensors and flat ZeRO-like partitions on 2 ranks."""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from flanpipe.core.train.optim import Adafactor, Piece, adam_state_bytes, optimizer_state_bytes, slices_of

# an embedding, a projection, a 3-D tensor and a norm weight: odd sizes, so partitions cut rows
SHAPES = [(37, 8), (8, 12), (2, 3, 5), (12,)]
STEPS = 6


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * 0.5 for s in SHAPES]


def _grads(step):
    """Gradients with structure: some rows much larger than others (an embedding's frequent tokens)."""
    g = torch.Generator().manual_seed(100 + step)
    out = []
    for s in SHAPES:
        grad = torch.randn(s, generator=g)
        if len(s) >= 2:
            grad = grad * torch.logspace(-2, 1, s[-2]).unsqueeze(-1)
        out.append(grad)
    return out


def _reference(beta1=None, weight_decay=0.0, lr=1e-2):
    """transformers' Adafactor with the paper's settings (imported here: spawned ranks skip it)."""
    from transformers.optimization import Adafactor as HFAdafactor

    params = [torch.nn.Parameter(p.clone()) for p in _params()]
    opt = HFAdafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                      decay_rate=-0.8, clip_threshold=1.0, beta1=beta1, weight_decay=weight_decay)
    for step in range(STEPS):
        for p, g in zip(params, _grads(step), strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("beta1, weight_decay", [(None, 0.0), (0.9, 0.1)])
def test_whole_tensors_match_transformers_adafactor(beta1, weight_decay):
    params = [torch.nn.Parameter(p.clone()) for p in _params()]
    opt = Adafactor(params, lr=1e-2, decay_rate=0.8, clip_threshold=1.0, beta1=beta1,
                    weight_decay=weight_decay)
    for step in range(STEPS):
        for p, g in zip(params, _grads(step), strict=True):
            p.grad = g.clone()
        opt.step()
    for ours, theirs in zip(params, _reference(beta1, weight_decay), strict=True):
        torch.testing.assert_close(ours.detach(), theirs, rtol=1e-5, atol=1e-6)
    # paper-size state: rows + columns per matrix, a full second moment for the vector only
    factored = 37 + 8 + 8 + 12 + 2 * 3 + 2 * 5
    momentum = sum(math.prod(s) for s in SHAPES) if beta1 else 0
    assert optimizer_state_bytes(opt) == 4 * (factored + 12 + momentum)
    assert adam_state_bytes(opt) == 8 * sum(math.prod(s) for s in SHAPES)


def _zero3_pieces(rank, world):
    """ZeRO-3: each tensor cut into ``ceil(numel / world)`` parts, this rank's part zero-padded."""
    pieces, at = [], 0
    for s in SHAPES:
        size = -(-math.prod(s) // world)
        n = max(0, min(size, math.prod(s) - rank * size))
        pieces.append(Piece(s, at, rank * size if n else 0, n))
        at += size
    return pieces, at


def _zero2_pieces(rank, world):
    """ZeRO-1/2: all tensors in one flat buffer (2 padding elements after the first), equal parts."""
    offsets, at = [], 0
    for i, s in enumerate(SHAPES):
        offsets.append(at)
        at += math.prod(s) + (2 if i == 0 else 0)
    size = -(-at // world)
    return slices_of(SHAPES, offsets, rank * size, size), size


def _flat(tensors, pieces, size):
    flat = torch.zeros(size)
    for t, x in zip(tensors, pieces, strict=True):
        flat[x.local_start:x.local_start + x.numel] = t.reshape(-1)[x.tensor_start:x.tensor_start + x.numel]
    return flat


def _rank(rank, world, port, layout, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    pieces, size = (_zero3_pieces if layout == "zero3" else _zero2_pieces)(rank, world)
    flat = torch.nn.Parameter(_flat(_params(), pieces, size))
    opt = Adafactor([flat], lr=1e-2)
    opt.set_layout(flat, pieces, torch.distributed.group.WORLD)
    for step in range(STEPS):
        flat.grad = _flat(_grads(step), pieces, size)
        opt.step()
    torch.save({"flat": flat.detach(), "pieces": pieces, "state": optimizer_state_bytes(opt)},
               f"{out}/{layout}-{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("layout", ["zero3", "zero2"])
def test_flat_partitions_on_two_ranks_match_whole_tensors(layout, tmp_path):
    """Each rank holds slices of flattened tensors (rows cut in two, padding); after 6 steps the
    tensors put back together equal transformers' Adafactor on the whole tensors."""
    from flanpipe.core.train.distributed import _free_port

    mp.spawn(_rank, args=(2, _free_port(), layout, str(tmp_path)), nprocs=2, join=True)
    whole = [torch.zeros(math.prod(s)) for s in SHAPES]
    for rank in range(2):
        saved = torch.load(tmp_path / f"{layout}-{rank}.pt", weights_only=False)
        for t, x in zip(whole, saved["pieces"], strict=True):
            t[x.tensor_start:x.tensor_start + x.numel] = saved["flat"][x.local_start:x.local_start + x.numel]
        # every rank keeps the paper's state: rows + columns of each matrix, its own vector elements
        assert saved["state"] == 4 * (37 + 8 + 8 + 12 + 2 * 3 + 2 * 5 + sum(
            x.numel for x in saved["pieces"] if not x.factored))
    for ours, theirs in zip(whole, _reference(), strict=True):
        torch.testing.assert_close(ours, theirs.reshape(-1), rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_name_is_named():
    from flanpipe.core.train.optim import build_optimizer

    with pytest.raises(ValueError, match="train.optimizer.*adafactor, adamw"):
        build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0, (0.9, 0.95))


@pytest.mark.parametrize("key, value, allowed", [
    ("adafactor_decay_rate", 1.5, "less than or equal to 1"),
    ("adafactor_beta1", 1.0, "less than 1"),
    ("adafactor_clip_threshold", 0, "greater than 0"),
    ("grad_clip", -1, "greater than or equal to 0"),
])
def test_bad_optimizer_settings_name_the_key(key, value, allowed):
    from flanpipe.core.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=f"train.{key}: Input should be {allowed}"):
        parse_config({"train": {key: value}})


def test_defaults_are_the_papers():
    from flanpipe.core.config import TrainConfig

    t = TrainConfig()
    assert (t.optimizer, t.lr, t.adafactor_decay_rate, t.adafactor_clip_threshold, t.adafactor_beta1,
            t.grad_clip, t.weight_decay) == ("adafactor", 3e-5, 0.8, 1.0, None, 0.0, 0.0)
