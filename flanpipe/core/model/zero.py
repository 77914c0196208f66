"""ZeRO-3 partitioned parameters, whole: what an export or a merge reads from a partitioned model."""

from __future__ import annotations

import torch


def full_tensor(param: torch.nn.Parameter, dtype: torch.dtype) -> torch.Tensor:
    """A parameter, whole, on the CPU in ``dtype``: gathered from its ZeRO-3 partitions where
    DeepSpeed partitioned it (it has a ``ds_id``), a copy of it otherwise.

    >>> full_tensor(torch.nn.Parameter(torch.ones(2)), torch.float64)
    tensor([1., 1.], dtype=torch.float64)
    """
    if not hasattr(param, "ds_id"):
        return param.detach().to("cpu", dtype).clone()
    import deepspeed

    with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
        return param.detach().to("cpu", dtype).clone()
