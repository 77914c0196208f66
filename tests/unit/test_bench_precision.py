"""``flanpipe bench precision`` (bench/precision.py) says what ``precision: auto`` chooses here."""

import shutil
import subprocess

from flanpipe.core.model.precision import BF16_CPU_FLAGS


def test_bench_precision_says_what_auto_chooses_on_this_machine(smollm2_dir, tmp_path, capsys):
    """``flanpipe bench precision``'s last line is this machine's answer, read here from ``lscpu``'s
    flags (or /proc/cpuinfo where lscpu is missing), not from the bench's own probe. The model is a
    one-layer Llama with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from bench.precision import bench_precision, print_precision

    config = AutoConfig.from_pretrained(smollm2_dir)
    config.update({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (smollm2_dir / name).exists():
            shutil.copy(smollm2_dir / name, tmp_path / name)

    if shutil.which("lscpu"):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        flags = next(line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags"))
    else:
        flags = open("/proc/cpuinfo").read().split()
    expected = "bf16" if any(flag in flags for flag in BF16_CPU_FLAGS) else "fp32"
    print_precision(bench_precision(tmp_path, prompts=2, threads=1, repeats=1))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"precision: auto chooses {expected} on this machine (auto: this CPU has")
