"""flanpipe: a reproducible FLAN-style instruction-tuning pipeline."""

__version__ = "0.1.0"
