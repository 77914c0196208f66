"""Every example in the docstrings of the package, of the benchmarks (bench/) and of the tests' shared
synthetic data runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import flanpipe
from tests.conftest import REPO

MODULES = [m.name for m in pkgutil.walk_packages(flanpipe.__path__, "flanpipe.")]
MODULES += [m.name for m in pkgutil.walk_packages([str(REPO / "bench")], "bench.")] + ["tests.synthetic"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
