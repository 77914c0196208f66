"""Models: the checkpoint seam (build, load, export), LoRA adapters, gathering ZeRO-3 partitions, and
the packed causal and encoder-decoder models."""
