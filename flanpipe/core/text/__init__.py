"""Text: the rows' schemas and validation, the instruction templates, stable keys and seeded draws,
hashing for dedup and decontamination, and few-shot exemplars."""
