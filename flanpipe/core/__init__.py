"""The core: kernels and shared types that several stages use (keys and seeded draws, the token
layout, schemas, templates, hashing, packing, shards, scoring, metrics, the registry, io and the
config types). It knows nothing of Snakemake rules and imports no stage."""
