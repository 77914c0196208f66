"""Optimizers: Adafactor as FLAN fine-tuned with it, under every ZeRO stage, and the LR schedule.

FLAN fine-tuned with Adafactor at an absolute learning rate of 3e-5: no relative step size, no
scaling of the update by the parameter's RMS, no momentum, second-moment decay 0.8, update clipping
at RMS 1.0. The second moment of a matrix is factored into row and column means (memory
``rows + columns`` rather than ``rows x columns``); vectors keep a full second moment.

DeepSpeed hands a ZeRO optimizer flat 1-D partitions, each holding slices of several flattened
weights (stage 1/2: one flat buffer per parameter group cut into equal parts; stage 3: every weight
cut into equal parts, each rank's parts concatenated). A :class:`Piece` list per flat partition
says which slice of which original tensor each element is (:func:`attach_zero_layout` reads it from
the DeepSpeed optimizer wrapper once). With it, :class:`Adafactor` factors and clips per original
tensor whatever the partitioning: each rank scatter-adds its elements' ``grad**2`` into the
tensors' row and column sums, one all-reduce of those small vectors (and one of the per-tensor sums
of squares of the update, for clipping) makes them global, and no weight is ever gathered. The
update is the one the paper's Adafactor makes on the whole tensor, on any number of ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Piece:
    """Elements ``[local_start, local_start + numel)`` of a flat partition are elements
    ``[tensor_start, tensor_start + numel)`` of the flattened tensor of shape ``shape`` (``numel``
    may be 0: a tensor of the same parameter group that this rank holds nothing of, listed so that
    every rank reduces vectors of the same length)."""

    shape: tuple[int, ...]
    local_start: int
    tensor_start: int
    numel: int

    @property
    def factored(self) -> bool:
        return len(self.shape) >= 2

    @property
    def tensor_numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stats_sizes(self) -> tuple[int, int]:
        """Lengths of the row and column statistics (``shape[:-1]`` and ``shape[:-2] + shape[-1:]``)."""
        rows, cols = self.shape[-2:]
        return self.tensor_numel // cols, self.tensor_numel // rows


def slices_of(shapes: list[tuple[int, ...]], offsets: list[int], start: int, size: int) -> list[Piece]:
    """The pieces of a partition ``[start, start + size)`` of a flat buffer holding tensors of
    ``shapes`` at ``offsets`` (ZeRO-1/2, bf16 ZeRO-0).

    >>> [(p.local_start, p.tensor_start, p.numel) for p in slices_of([(2, 3), (4,)], [0, 6], 4, 5)]
    [(0, 4, 2), (2, 0, 3)]
    >>> [p.numel for p in slices_of([(2, 3), (4,)], [0, 6], 0, 5)]
    [5, 0]
    """
    pieces = []
    for shape, offset in zip(shapes, offsets, strict=True):
        lo, hi = max(offset, start), min(offset + math.prod(shape), start + size)
        n = max(0, hi - lo)
        pieces.append(Piece(tuple(shape), lo - start if n else 0, lo - offset if n else 0, n))
    return pieces


class Adafactor(torch.optim.Optimizer):
    """Adafactor (Shazeer and Stern, 2018) with an absolute learning rate, per original tensor.

    ``update = grad / sqrt(v)``, with ``v`` the decayed mean of ``grad**2 + eps`` (decay
    ``1 - step ** -decay_rate``), factored for tensors of 2 or more dimensions; the update is
    clipped to RMS ``clip_threshold`` per tensor; with ``beta1``, a momentum of the clipped
    updates; ``p -= lr * update``. The same arithmetic as ``transformers.optimization.Adafactor(
    lr=..., scale_parameter=False, relative_step=False, warmup_init=False)``, which the tests
    compare with.

    A parameter may be a flat ZeRO partition: :meth:`set_layout` gives its pieces and the process
    group that holds the rest of its tensors; without one a parameter is one whole tensor.
    State per flat parameter: ``factored`` (every factored tensor's row then column statistics,
    concatenated), ``full`` (the second moment of this rank's elements of the other tensors) and,
    with momentum, ``exp_avg``.
    """

    def __init__(self, params, lr: float = 3e-5, decay_rate: float = 0.8, eps: float = 1e-30,
                 clip_threshold: float = 1.0, beta1: float | None = None, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"train.lr must be > 0 (got {lr})")
        defaults = {"lr": lr, "decay_rate": decay_rate, "eps": eps, "clip_threshold": clip_threshold,
                    "beta1": beta1, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.layouts: dict[int, tuple[list[Piece], object]] = {}
        self._divisor_cache: dict[int, torch.Tensor] = {}

    def set_layout(self, flat: torch.Tensor, pieces: list[Piece], group=None) -> None:
        """``flat`` (a 1-D partition) holds ``pieces``; statistics are summed over ``group``."""
        self.layouts[id(flat)] = (pieces, group)

    def _divisors(self, p: torch.Tensor, factored: list[Piece]) -> torch.Tensor:
        """Sums to means: a row sum over ``cols`` elements, a column sum over ``rows`` (cached)."""
        if id(p) not in self._divisor_cache:
            sizes = [(n, x.shape[-1], m, x.shape[-2]) for x in factored for n, m in [x.stats_sizes]]
            self._divisor_cache[id(p)] = torch.cat(
                [torch.tensor([c] * n + [r] * m, dtype=torch.float32) for n, c, m, r in sizes]
                or [torch.zeros(0)]).to(p.device)
        return self._divisor_cache[id(p)]

    def _layout(self, p: torch.Tensor) -> tuple[list[Piece], object]:
        if id(p) in self.layouts:
            return self.layouts[id(p)]
        return [Piece(tuple(p.shape), 0, 0, p.numel())], None

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._step_param(p, group)
        return loss

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        pieces, process_group = self._layout(p)
        grad = p.grad.to(torch.promote_types(p.grad.dtype, torch.float32)).reshape(-1)  # (float64 stays)
        factored = [x for x in pieces if x.factored]
        full = [x for x in pieces if not x.factored]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["factored"] = grad.new_zeros(sum(sum(x.stats_sizes) for x in factored))
            state["full"] = grad.new_zeros(sum(x.numel for x in full))
            if group["beta1"] is not None:
                state["exp_avg"] = torch.zeros_like(grad)
        state["step"] += 1
        beta2 = 1.0 - state["step"] ** -group["decay_rate"]
        squared = grad * grad + group["eps"]

        # 1. row and column sums of grad**2 of every factored tensor, over all ranks
        sums = torch.zeros_like(state["factored"])
        at = 0
        for x in factored:
            n_rows, n_cols = x.stats_sizes
            if x.numel:
                _add_row_col(x, squared[x.local_start:x.local_start + x.numel], sums[at:at + n_rows],
                             sums[at + n_rows:at + n_rows + n_cols])
            at += n_rows + n_cols
        if process_group is not None and factored:
            torch.distributed.all_reduce(sums, group=process_group)
        stats = state["factored"].mul_(beta2).add_(sums.div_(self._divisors(p, factored)), alpha=1.0 - beta2)

        # 2. the unclipped update of this rank's elements (0 on padding)
        update = torch.zeros_like(grad)
        at = 0
        for x in factored:
            n_rows, n_cols = x.stats_sizes
            if x.numel:
                row_stat = stats[at:at + n_rows].view(*x.shape[:-1])
                r_factor = (row_stat / row_stat.mean(dim=-1, keepdim=True)).rsqrt_().reshape(-1)
                c_factor = stats[at + n_rows:at + n_rows + n_cols].rsqrt()
                sl = slice(x.local_start, x.local_start + x.numel)
                _scale_row_col(x, grad[sl], r_factor, c_factor, update[sl])
            at += n_rows + n_cols
        v = state["full"]
        at = 0
        for x in full:
            sl = slice(x.local_start, x.local_start + x.numel)
            v[at:at + x.numel].mul_(beta2).add_(squared[sl], alpha=1.0 - beta2)
            update[sl] = grad[sl] * v[at:at + x.numel].rsqrt()
            at += x.numel

        # 3. clip each tensor's update to RMS clip_threshold (sums of squares over all ranks)
        sumsq = torch.stack([update[x.local_start:x.local_start + x.numel].square().sum() for x in pieces])
        if process_group is not None:
            torch.distributed.all_reduce(sumsq, group=process_group)
        numel = torch.tensor([x.tensor_numel for x in pieces], dtype=sumsq.dtype, device=sumsq.device)
        scale = 1.0 / ((sumsq / numel).sqrt() / group["clip_threshold"]).clamp(min=1.0)
        for x, s in zip(pieces, scale, strict=True):
            if x.numel:
                update[x.local_start:x.local_start + x.numel].mul_(s)

        if group["beta1"] is not None:
            m = state["exp_avg"]
            m.mul_(group["beta1"]).add_(update, alpha=1.0 - group["beta1"])
            update = m
        flat = p.view(-1)
        if group["weight_decay"]:
            flat.mul_(1.0 - group["lr"] * group["weight_decay"])
        flat.add_(update.to(p.dtype), alpha=-group["lr"])


def _row_col(x: Piece, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The row and column statistic indices of a piece's elements, for shape ``(..., rows, cols)``.

    >>> [t.tolist() for t in _row_col(Piece((2, 3), 0, 2, 3))]
    [[0, 1, 1], [2, 0, 1]]
    """
    rows, cols = x.shape[-2:]
    idx = torch.arange(x.tensor_start, x.tensor_start + x.numel, device=device)
    return idx // cols, (idx // (rows * cols)) * cols + idx % cols


def _whole_rows(x: Piece) -> bool:
    """A piece of a matrix made of whole rows (every piece of an unpartitioned tensor): its
    statistics are sums over a ``(rows, cols)`` view, with no index arrays."""
    cols = x.shape[-1]
    return len(x.shape) == 2 and x.tensor_start % cols == 0 and x.numel % cols == 0


def _add_row_col(x: Piece, squared: torch.Tensor, row_sums: torch.Tensor, col_sums: torch.Tensor) -> None:
    """Add a piece's ``grad**2`` (``squared``, its local elements) into its tensor's row and column sums."""
    if _whole_rows(x):
        block = squared.view(-1, x.shape[-1])
        first = x.tensor_start // x.shape[-1]
        row_sums[first:first + block.shape[0]].add_(block.sum(dim=1))
        col_sums.add_(block.sum(dim=0))
        return
    row, col = _row_col(x, squared.device)
    row_sums.index_add_(0, row, squared)
    col_sums.index_add_(0, col, squared)


def _scale_row_col(x: Piece, grad: torch.Tensor, r_factor: torch.Tensor, c_factor: torch.Tensor,
                   out: torch.Tensor) -> None:
    """``out = grad * r_factor[row] * c_factor[col]`` for a piece's local elements."""
    if _whole_rows(x):
        cols = x.shape[-1]
        first = x.tensor_start // cols
        block = out.view(-1, cols)
        torch.mul(grad.view(-1, cols), r_factor[first:first + block.shape[0], None], out=block)
        block.mul_(c_factor[None, :])
        return
    row, col = _row_col(x, grad.device)
    out.copy_(grad * r_factor[row] * c_factor[col])


def attach_zero_layout(optimizer) -> str:
    """Tell the :class:`Adafactor` inside a DeepSpeed optimizer wrapper which slice of which
    original tensor every element of its flat partitions is. A plain optimizer (fp32 ZeRO-0) steps
    the model's own tensors and needs nothing. Returns the wrapper's class name (``"none"`` for
    another optimizer than Adafactor, which needs no layout).

    Reads DeepSpeed 0.19's wrappers: ZeRO-3 (each parameter's ``ds_tensor`` is its
    ``partition_numel()`` elements from ``rank * partition_numel()``, zero-padded at the end, and a
    sub-group's flat partition concatenates them in order), ZeRO-1/2 (a parameter group's tensors at
    ``round_robin_bit16_offsets`` in one flat buffer, rank ``r`` holding
    ``[r * partition_size, (r + 1) * partition_size)``) and bf16 ZeRO-0 (``BF16_Optimizer``: the
    same without per-tensor padding).
    """
    import deepspeed.comm as dist

    def reduce_over(pg):  # None: nothing to reduce (one rank)
        pg = torch.distributed.group.WORLD if pg is None else pg
        return pg if torch.distributed.get_world_size(group=pg) > 1 else None

    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, Adafactor):
        return "none"
    kind = type(optimizer).__name__
    if kind == "DeepSpeedZeroOptimizer_Stage3":
        if optimizer.offload_optimizer or optimizer.offload_param:
            raise ValueError("Adafactor under ZeRO-3 with offload is not supported")
        for i, sub_group in enumerate(optimizer.fp16_groups):
            pg = optimizer.sub_group_process_groups[i]
            rank = dist.get_rank(group=pg)
            pieces, at = [], 0
            for param in sub_group:
                size = param.partition_numel()
                start = rank * size
                n = max(0, min(size, param.ds_numel - start))
                pieces.append(Piece(tuple(param.ds_shape), at, start if n else 0, n))
                at += size
            inner.set_layout(optimizer.fp32_partitioned_groups_flat[i], pieces, reduce_over(pg))
        return kind
    if kind == "DeepSpeedZeroOptimizer":
        if optimizer.cpu_offload:
            raise ValueError("Adafactor under ZeRO-1/2 with offload is not supported")
        for i in range(len(optimizer.round_robin_bit16_groups)):
            pg = optimizer.real_dp_process_group[i]
            size = optimizer.partition_size[i]
            shapes = [tuple(m.shape) for m in optimizer.round_robin_bit16_meta[i]]
            pieces = slices_of(shapes, optimizer.round_robin_bit16_offsets[i], dist.get_rank(group=pg) * size,
                               size)
            inner.set_layout(optimizer.single_partition_of_fp32_groups[i], pieces, reduce_over(pg))
        return kind
    if kind == "BF16_Optimizer":
        for i, tensors in enumerate(optimizer.bf16_groups):
            pg = optimizer.real_dp_process_group[i]
            size = optimizer.bf16_groups_flat[i].numel() // dist.get_world_size(group=pg)
            shapes = [tuple(t.shape) for t in tensors]
            offsets = [0, *torch.tensor([t.numel() for t in tensors]).cumsum(0).tolist()[:-1]]
            pieces = slices_of(shapes, offsets, dist.get_rank(group=pg) * size, size)
            inner.set_layout(optimizer.fp32_groups_flat_partition[i], pieces, reduce_over(pg))
        return kind
    if inner is optimizer:
        return kind
    hint = (" (DeepSpeed's wrapper for train.precision bf16 under train.zero_stage 0: with bf16, use "
            "zero_stage 1, 2 or 3)" if kind.startswith("FP16_") else "")
    raise ValueError(f"Adafactor does not know the partitions of DeepSpeed's {kind}{hint}")


def build_optimizer(name: str, params, lr: float, weight_decay: float, betas: tuple[float, float],
                    decay_rate: float = 0.8, clip_threshold: float = 1.0, beta1: float | None = None):
    """``adafactor`` (the paper's) or ``adamw``."""
    if name == "adafactor":
        return Adafactor(params, lr=lr, decay_rate=decay_rate, clip_threshold=clip_threshold, beta1=beta1,
                         weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"train.optimizer: {name!r}; allowed: adafactor, adamw")


def constant_with_warmup(warmup_steps: int):
    """The LR multiplier at a (0-based) step: a linear ramp over ``warmup_steps``, then 1.

    >>> [constant_with_warmup(4)(s) for s in range(6)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return factor


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # a DeepSpeed ZeRO wrapper keeps the client's


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (on this rank)."""
    return sum(t.numel() * t.element_size() for s in _inner(optimizer).state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


def optimized_parameters(optimizer: torch.optim.Optimizer) -> int:
    """Parameters (whole tensors, on all ranks) that the optimizer steps, read from DeepSpeed's
    wrapper (ZeRO-3's ``fp16_groups``, ZeRO-1/2's ``bit16_groups``, bf16 ZeRO-0's ``bf16_groups``) or
    from a plain optimizer's parameter groups: with LoRA, the adapters' parameters only.

    >>> optimized_parameters(torch.optim.SGD([torch.zeros(2, 3), torch.zeros(4)], lr=1.0))
    10
    """
    for groups in ("fp16_groups", "bit16_groups", "bf16_groups"):
        if getattr(optimizer, groups, None):
            return sum(getattr(p, "ds_numel", p.numel()) for g in getattr(optimizer, groups) for p in g)
    return sum(p.numel() for g in _inner(optimizer).param_groups for p in g["params"])


def adam_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes Adam's two fp32 moments would take for the elements this rank's optimizer steps."""
    params = [p for g in _inner(optimizer).param_groups for p in g["params"]]
    if not params:  # ZeRO-3 puts a sub-group's partition in its group only while it steps
        params = getattr(optimizer, "fp32_partitioned_groups_flat", [])
    return sum(8 * p.numel() for p in params)
