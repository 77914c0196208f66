"""The README and the manual (``docs/``, ``mkdocs.yml``) say only what is so: the README's links land
on pages, the modules, names and files the pages cite exist, every shell command is run by a test or
says it is not, and the site builds with ``mkdocs build --strict`` offline."""

import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
NOT_RUN = "not run by the tests"
SHELL_FENCES = {"bash", "sh", "shell", "console"}
REPO_PATH = r"(flanpipe|bench|tests|scripts|rules|workflow_scripts|config|profiles|docs|\.ci)/"

# Cheap commands this module runs itself (test_cheap_commands_run), in this order, in a scratch
# folder holding a copy of config/: a command that writes (download, config-schema --output) writes
# there.
RUN_HERE = [
    "flanpipe --help",
    "flanpipe datasets",
    "flanpipe datasets --cluster nli --json",
    "flanpipe datasets --embedded",
    "flanpipe templates --dataset rte",
    "flanpipe templates --dataset arc_easy --options letters",
    "flanpipe check-config",
    "flanpipe check-config --config config/config.yaml",
    "flanpipe config-schema --check config/config.schema.json",
    "flanpipe config-schema --output config/config.schema.json",
    "flanpipe download --dataset rte",
]

# Commands another test runs, and which (file::function). Where the test runs the command with
# other paths or arguments, the note says how.
RUN_ELSEWHERE = {
    "bash scripts/test.sh": (".ci/run", "CI runs the suite with this command"),
    "snakemake --cores 2 all": ("tests/e2e/conftest.py::demo_run", "the demo's whole workflow"),
    "snakemake -n all": ("tests/e2e/test_workflow.py::test_rerun_has_nothing_to_do", ""),
    "snakemake --cores 2 data/raw/sst2/manifest.json": (
        "tests/e2e/test_workflow.py::test_killed_job_output_is_not_taken_as_complete",
        "with --configfile: sst2 from a local folder"),
    "snakemake --cores 2 models/nli/run.json": (
        "tests/e2e/test_pretrained.py::run", "with the pretrained checkpoint's config"),
    "flanpipe launch --tasks-per-node 2 -- train --mixture nli": (
        "tests/e2e/test_train.py::_train", "with explicit --config, --packed, --tokenizer and --out"),
    "flanpipe summary": ("tests/e2e/test_workflow.py::test_summary_lists_every_dataset", "with --data"),
    "flanpipe stats --mixture nli": ("tests/e2e/test_mixtures.py::test_catalog_tables_and_stats_command", ""),
    'flanpipe generate --model models/all --prompt "Is this review positive or negative? A delight."': (
        "tests/e2e/test_evaluate.py::test_generate_cli_equals_transformers_greedy", "another prompt"),
    "flanpipe evaluate --model models/nli --dataset rte --out /tmp/rte.json": (
        "tests/e2e/test_evaluate.py::test_evaluate_cli_on_a_pretrained_bpe_checkpoint",
        "on SmolLM2-135M-Instruct and arc_easy"),
    "python -m pytest -m slurm tests/e2e/test_slurm.py": ("tests/e2e/test_slurm.py", "it runs that test"),
    "python -m pytest -m slurm tests/e2e/test_slurm_multinode.py": (
        "tests/e2e/test_slurm_multinode.py", "it runs that test"),
    "flanpipe datasets --bank flan2021 --flan-root ../FLAN": (
        "tests/unit/test_flan_bank.py::test_every_registry_entry_renders_all_it_can_and_the_cli_lists_the_rest",
        "with the tests' small checkout, and FLAN's own files where ../shared/flan has them, as --json"),
    "mkdocs build --strict": ("tests/unit/test_docs.py::test_site_builds_strict", "into a temporary folder"),
    "flanpipe publish --model models/nli --repo me/flanpipe-nli --dry-run": (
        "tests/unit/test_publish.py::test_a_dry_run_lists_every_file_of_hf_and_adapter_with_its_size",
        "on a tiny LoRA run in a temporary folder"),
}


def normalise(command: str) -> str:
    """A command's words, quotes and comment removed, so that spacing and quoting do not matter.

    >>> normalise('flanpipe generate --prompt "A delight."   # greedy')
    'flanpipe generate --prompt A delight.'
    """
    return " ".join(shlex.split(command, comments=True))


def shell_commands(text: str) -> list[tuple[str, bool]]:
    """(command, marked not run) for every command line of the text's shell blocks. A line's own
    comment, or a comment line opening its block, can mark it; `\\` continues a line.

    >>> shell_commands("```bash\\n# not run by the tests\\nsnakemake --profile slurm \\\\\\n  all\\n```\\n")
    [('snakemake --profile slurm all', True)]
    >>> shell_commands("```bash\\nflanpipe datasets   # the registry\\n$ flanpipe stats\\n```")
    [('flanpipe datasets', False), ('flanpipe stats', False)]
    """
    out = []
    for lang, body in re.findall(r"^```(\w[\w-]*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if lang not in SHELL_FENCES:
            continue
        lines = body.replace("\\\n", " ").splitlines()
        whole_block = bool(lines) and lines[0].lstrip().startswith("#") and NOT_RUN in lines[0]
        for line in lines:
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not line or line.startswith("#"):
                continue
            out.append((normalise(line), whole_block or NOT_RUN in line))
    return out


def doc_commands() -> list[tuple[str, str, bool]]:
    return [(str(p.relative_to(REPO)), cmd, marked) for p in PAGES
            for cmd, marked in shell_commands(p.read_text(encoding="utf-8"))]


def test_readme_is_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_every_command_is_run_by_a_test_or_says_it_is_not():
    known = {normalise(c) for c in RUN_HERE} | {normalise(c) for c in RUN_ELSEWHERE}
    unchecked = [f"{page}: {cmd}" for page, cmd, marked in doc_commands() if not marked and cmd not in known]
    assert not unchecked, ("run these in a test (RUN_HERE, or RUN_ELSEWHERE naming the test) or mark them "
                           f"'# {NOT_RUN}':\n" + "\n".join(unchecked))


def test_the_lists_of_run_commands_are_used_and_name_real_tests():
    used = {cmd for _, cmd, _ in doc_commands()}
    stale = [c for c in [*RUN_HERE, *RUN_ELSEWHERE] if normalise(c) not in used]
    assert not stale, f"no page shows these any more: {stale}"
    for where, _note in RUN_ELSEWHERE.values():
        path, _, name = where.partition("::")
        assert (REPO / path).is_file(), where
        if name:
            assert re.search(rf"^\s*(async )?def {name}\(", (REPO / path).read_text(), re.M), where


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    script = BIN / words[0]
    head = [str(script)] if script.exists() else [sys.executable, "-m", "flanpipe.cli"]
    argv = [*head, *words[1:]]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cheap_commands_run(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    schema = (REPO / "config/config.schema.json").read_text()
    (tmp_path / "config/config.schema.json").write_text("{}")  # --output must write it again
    for command in RUN_HERE:
        if command.endswith("--check config/config.schema.json"):
            (tmp_path / "config/config.schema.json").write_text(schema)
        proc = _run(command, tmp_path)
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        if not any(w in command for w in ("--output", "--check", "download")):  # these print nothing
            assert proc.stdout.strip(), command
    assert (tmp_path / "config/config.schema.json").read_text() == schema
    assert (tmp_path / "data/raw/rte/train.parquet").is_file()


def test_readme_links_land_on_pages():
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://|#", target):
            continue
        assert (REPO / target.split("#")[0]).exists(), target


def _spans(page: Path) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", page.read_text(encoding="utf-8")))


def _module_file(dotted: list[str]) -> tuple[Path | None, list[str]]:
    """The source file of the longest module prefix of a dotted name, and the rest of the name."""
    for i in range(len(dotted), 0, -1):
        base = REPO.joinpath(*dotted[:i])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate, dotted[i:]
    return None, dotted


def _defines(source: Path, names: list[str]) -> bool:
    """Whether ``names`` (a top-level name, or a class then a member) are defined in ``source``."""
    body = ast.parse(source.read_text(encoding="utf-8")).body
    for name in names:
        found = None
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                found = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    found = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                if any((a.asname or a.name) == name for a in node.names):
                    found = node
        if found is None:
            return False
        body = getattr(found, "body", [])
    return True


def test_cited_modules_and_names_exist():
    missing = []
    for page in PAGES:
        for span in _spans(page):
            for dotted in re.findall(r"^((?:flanpipe|bench)(?:\.\w+)+)(?:\(.*\))?$", span.strip()):
                source, rest = _module_file(dotted.split("."))
                if source is None or not _defines(source, rest):
                    missing.append(f"{page.relative_to(REPO)}: {dotted}")
    assert not missing, "\n".join(missing)


def test_cited_files_exist():
    missing = []
    for page in PAGES:
        for span in _spans(page):
            path = span.strip().split(" ")[0].split("::")[0]
            if not re.match(REPO_PATH, path):
                continue
            if re.search(r"[{<*]|XXXXX", path):
                continue
            if not (REPO / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, "\n".join(missing)


def test_site_builds_strict(tmp_path):
    """The site builds offline with every warning an error, the API pages included (mkdocstrings
    reads the package's source statically), and asks no font server for anything."""
    import importlib

    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):  # the dev extra's: never a skip
        importlib.import_module(module)
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (site / "reference/core/index.html").is_file()
    html = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    assert "fonts.googleapis.com" not in html
    assert "flanpipe.core.config.Config" in html
    assert "bench.train.print_train" in html  # the benchmarks, read from bench/ beside the package


def test_the_layout_page_maps_every_core_module_and_the_reference_documents_each():
    """docs/layout.md's table of the core names every module under flanpipe/core (and no other), in the
    group its folder is; docs/reference/core.md renders each."""
    on_disk = {".".join(p.relative_to(REPO).with_suffix("").parts)
               for p in (REPO / "flanpipe/core").rglob("*.py") if p.name != "__init__.py"}
    layout = (REPO / "docs/layout.md").read_text()
    table = re.findall(r"^\| `([^`]+)` \| `(flanpipe\.core\.[\w.]+)` \|", layout, re.M)
    assert {module for _, module in table} == on_disk
    for group, module in table:
        expected = module.split(".")[2] if module.count(".") == 3 else "(root)"
        assert group == expected, f"{module} is listed under {group}"
    rendered = (REPO / "docs/reference/core.md").read_text()
    reference = set(re.findall(r"^::: (flanpipe\.core\.[\w.]+)$", rendered, re.M))
    assert reference == on_disk
