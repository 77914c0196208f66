"""``precision: auto`` (flanpipe.core.model.precision): the decision on both answers of each probe, and
the CPU probe on this machine against ``lscpu``'s own flags."""

import shutil
import subprocess

import pytest

from flanpipe.core.model.precision import BF16_CPU_FLAGS, choose, cpu_bf16_units, resolve


@pytest.mark.parametrize(("units", "expected"), [
    ((), "fp32"), (("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16"), (("amx_bf16", "avx512_bf16"), "bf16")])
def test_auto_on_a_cpu_takes_bf16_only_with_bf16_units(units, expected):
    chosen = choose("auto", cuda=False, cuda_bf16=False, cpu_units=units)
    assert chosen.name == expected
    assert all(unit in chosen.reason for unit in units)


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_follows_its_bf16_support_not_the_cpus(supported, expected):
    assert choose("auto", cuda=True, cuda_bf16=supported, cpu_units=("amx_bf16",)).name == expected


@pytest.mark.parametrize("named", ["fp32", "bf16"])
def test_a_precision_named_in_config_is_taken_as_it_is(named):
    for units in ((), BF16_CPU_FLAGS):
        assert choose(named, cuda=False, cuda_bf16=False, cpu_units=units).record() == {
            "precision": named, "precision_reason": f"config: {named}"}


def test_an_unknown_precision_is_refused_naming_what_is_allowed():
    with pytest.raises(ValueError, match="allowed: auto, fp32, bf16"):
        choose("fp16", cuda=False, cuda_bf16=False, cpu_units=())


@pytest.mark.skipif(not shutil.which("lscpu"), reason="lscpu (util-linux) is not installed")
def test_the_probe_reads_this_cpus_flags_as_lscpu_does():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    flags = next(line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags"))
    expected = tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)
    assert cpu_bf16_units() == expected
    assert resolve("auto", "cpu").name == ("bf16" if expected else "fp32")


def test_an_unreadable_cpuinfo_stays_on_fp32(tmp_path):
    assert cpu_bf16_units(tmp_path / "missing") == ()

