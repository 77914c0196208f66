"""Every example in the package's docstrings runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import flanpipe

MODULES = [m.name for m in pkgutil.iter_modules(flanpipe.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(f"flanpipe.{name}"))
    assert result.failed == 0
