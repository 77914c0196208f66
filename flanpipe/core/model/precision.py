"""The precision a model trains and scores in, when config says ``auto``: bf16 only where the hardware
multiplies bf16 matrices natively, fp32 elsewhere.

On a CPU without bf16 matrix units a bf16 product is emulated and runs several times slower than fp32
(a 512x576 by 576x1536 product on one thread: 28.5 against 145.2 GFLOP/s on a Xeon without AMX or
AVX512-BF16); on one with AMX it runs several times faster (325.8 against 43.3 GFLOP/s on a Xeon with
``amx_bf16``). So ``auto`` takes bf16 on a CPU only where it has AMX (``amx_bf16``) or AVX512-BF16
(``avx512_bf16``), and on a GPU only where torch says the GPU supports it. :func:`choose` is the
decision, a pure function of the probes; :func:`resolve` probes this machine
and decides. Both return a :class:`Precision`, which says why, for ``run.json`` and the eval JSON.

>>> choose("auto", cuda=False, cuda_bf16=False, cpu_units=())
Precision(name='fp32', reason='auto: this CPU has no bf16 matrix units (AMX, AVX512-BF16)')
>>> choose("auto", cuda=False, cuda_bf16=False, cpu_units=("amx_bf16",)).name
'bf16'
>>> choose("bf16", cuda=False, cuda_bf16=False, cpu_units=()).reason
'config: bf16'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""The ``/proc/cpuinfo`` flags of the CPU units that multiply bf16 matrices natively."""


@dataclass(frozen=True)
class Precision:
    """A chosen precision and why it was chosen."""

    name: Literal["fp32", "bf16"]
    reason: str

    def record(self) -> dict[str, str]:
        """The fields ``run.json`` and the eval JSON carry: ``precision`` and ``precision_reason``."""
        return {"precision": self.name, "precision_reason": self.reason}


def choose(requested: str, *, cuda: bool, cuda_bf16: bool, cpu_units: tuple[str, ...]) -> Precision:
    """The precision for ``requested`` (``auto``, ``fp32`` or ``bf16``) on a device described by the
    probes: whether a GPU is used and supports bf16, and the CPU's bf16 units (see
    :data:`BF16_CPU_FLAGS`). A precision asked for by name is taken as it is."""
    if requested in ("fp32", "bf16"):
        return Precision(requested, f"config: {requested}")
    if requested != "auto":
        raise ValueError(f"precision {requested!r}; allowed: auto, fp32, bf16")
    if cuda:
        return (Precision("bf16", "auto: the GPU supports bf16") if cuda_bf16
                else Precision("fp32", "auto: the GPU does not support bf16"))
    if cpu_units:
        return Precision("bf16", f"auto: this CPU has bf16 matrix units ({', '.join(cpu_units)})")
    return Precision("fp32", "auto: this CPU has no bf16 matrix units (AMX, AVX512-BF16)")


def cpu_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """Which of :data:`BF16_CPU_FLAGS` the CPU's flags list (read from ``cpuinfo``); none where the file
    cannot be read (not Linux): then ``auto`` stays on fp32, the safe side.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix="cpuinfo", delete=False) as f:
    ...     _ = f.write("flags\\t\\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\\n")
    >>> cpu_bf16_units(f.name); os.unlink(f.name)
    ('amx_bf16', 'avx512_bf16')
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            flags.update(line.split(":", 1)[1].split())
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def resolve(requested: str, device: str = "cpu") -> Precision:
    """:func:`choose` on this machine: ``device`` ``cuda`` probes the GPU (``torch.cuda``), ``cpu`` the
    CPU's flags."""
    import torch

    cuda = str(device).startswith("cuda")
    cuda_bf16 = cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return choose(requested, cuda=cuda, cuda_bf16=cuda_bf16, cpu_units=() if cuda else cpu_bf16_units())
