"""Benchmarks, one module per stage, each reachable as ``flanpipe bench <stage>``: every one times
flanpipe's path next to a named peer measured in the same run and prints the ratio.

Not installed with the package: ``flanpipe bench`` runs them from a checkout (this folder beside
``flanpipe/``, ``pip install -e '.[dev]'``, whose dev extra holds the peers). The synthetic data they
share with the tests is ``tests/synthetic.py``'s; the package never imports this folder (an
import-linter contract)."""
