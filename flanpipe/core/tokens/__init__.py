"""Tokens: the tokenizer seam, chat templates, the training formats (eos, text, chat,
continuation), bin packing and the packed shards."""
