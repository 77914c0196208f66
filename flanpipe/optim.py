"""Optimizers: Adafactor as FLAN fine-tuned with it, and the learning-rate schedule.

FLAN fine-tuned with Adafactor at an absolute learning rate of 3e-5: no relative step size, no
scaling of the update by the parameter's RMS, no momentum. The second moment of a matrix is
factored into row and column means (memory O(n + m) rather than O(n m)); vectors keep a full second
moment. Under DeepSpeed ZeRO-3 the optimizer only ever sees flat 1-D partitions of the parameters,
so every second moment is full there, the same size as Adam's (``optimizer_state_bytes`` measures
it).
"""

from __future__ import annotations

import torch


class Adafactor(torch.optim.Optimizer):
    """Adafactor (Shazeer and Stern, 2018) with an absolute learning rate.

    ``update = grad / sqrt(v)``, with ``v`` the decayed mean of ``grad**2 + eps`` (decay
    ``1 - step ** -decay_rate``), factored for tensors of 2 or more dimensions; the update is
    clipped to RMS ``clip_threshold``; with ``beta1``, a momentum of the clipped updates;
    ``p -= lr * update``. The same arithmetic as ``transformers.optimization.Adafactor(lr=...,
    scale_parameter=False, relative_step=False, warmup_init=False)``, which the tests compare with.
    """

    def __init__(self, params, lr: float = 3e-5, decay_rate: float = 0.8, eps: float = 1e-30,
                 clip_threshold: float = 1.0, beta1: float | None = None, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"train.lr must be > 0 (got {lr})")
        defaults = {"lr": lr, "decay_rate": decay_rate, "eps": eps, "clip_threshold": clip_threshold,
                    "beta1": beta1, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                factored = grad.dim() >= 2
                if not state:
                    state["step"] = 0
                    if factored:
                        state["exp_avg_sq_row"] = grad.new_zeros(grad.shape[:-1])
                        state["exp_avg_sq_col"] = grad.new_zeros(grad.shape[:-2] + grad.shape[-1:])
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    if group["beta1"] is not None:
                        state["exp_avg"] = torch.zeros_like(grad)
                state["step"] += 1
                beta2 = 1.0 - state["step"] ** -group["decay_rate"]
                squared = grad * grad + group["eps"]
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2).add_(squared.mean(dim=-1), alpha=1.0 - beta2)
                    col.mul_(beta2).add_(squared.mean(dim=-2), alpha=1.0 - beta2)
                    r = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
                    update = grad * r * col.unsqueeze(-2).rsqrt()
                else:
                    v = state["exp_avg_sq"]
                    v.mul_(beta2).add_(squared, alpha=1.0 - beta2)
                    update = grad * v.rsqrt()
                rms = update.norm(2) / update.numel() ** 0.5
                update.div_((rms / group["clip_threshold"]).clamp_(min=1.0))
                if group["beta1"] is not None:
                    m = state["exp_avg"]
                    m.mul_(group["beta1"]).add_(update, alpha=1.0 - group["beta1"])
                    update = m
                if group["weight_decay"]:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def build_optimizer(name: str, params, lr: float, weight_decay: float, betas: tuple[float, float]):
    """``adafactor`` (the paper's) or ``adamw``."""
    if name == "adafactor":
        return Adafactor(params, lr=lr, weight_decay=weight_decay)
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


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (on this rank)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # a DeepSpeed ZeRO wrapper keeps the client's
    return sum(t.numel() * t.element_size() for s in inner.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))
