import pytest

from tests.conftest import run_snakemake


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One full run of the workflow on the embedded default, shared by the e2e modules. Tests that
    change its files put them back as they were (see ``test_workflow.deleted``)."""
    wd = tmp_path_factory.mktemp("demo")
    run_snakemake(wd, "all")
    return wd
