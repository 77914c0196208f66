"""Benchmarks, one module per stage, each reachable as ``flanpipe bench <stage>``: every one times
flanpipe's path next to a named peer measured in the same run and prints the ratio."""
