"""FLAN's own templates, read from a FLAN checkout as data and mapped onto the registry's schemas.

The paper's code (google-research/FLAN) publishes its instruction templates as one Python dict
literal, ``PATTERNS``: FLAN's task name to ten ``(input, target)`` format strings. A bank
(``templatize.bank``) names the file; ``templatize.flan_root`` names the checkout:

- ``flan2021``: ``flan/templates.py``, the 2021 paper's templates;
- ``flan2022``: ``flan/v2/flan_templates_branched.py``, the same 61 tasks as corrected for Flan 2022
  (with the ``{hypothesis}n\\n`` typo of nine NLI templates fixed: :func:`fix_typos`).

The file is parsed, never imported or executed: :func:`read_patterns` evaluates the ``PATTERNS``
node with :func:`ast.literal_eval`, and refuses a file where anything but a literal stands there.

FLAN's templates name the fields of FLAN's own preprocessed examples (``{context}``, ``{text}``,
``{options_}``, ``{sent1}``). The field map, ``flanpipe/data/templates/flan_fields.yaml``, says for
each registry entry which FLAN task it is and how each FLAN field is written in flanpipe's
placeholder language over the entry's hub schema (:mod:`flanpipe.core.text.templates`), plus the
paper's answer strings. :func:`convert` rewrites each FLAN template through the map; a template
naming a field the map does not give is skipped, with the reason kept (:class:`Skipped`).

>>> fields = {"context": "{premise}", "hypothesis": "{hypothesis}"}
>>> convert_pattern(("{context}\\nTrue?\\n{hypothesis}\\n{options_}", "{answer}"), fields, {})
('{premise}\\nTrue?\\n{hypothesis}\\n{options_}', '{answer}')
>>> convert_pattern(("{title}: {context}", "{answer}"), fields, {"title": "no title"})
Skipped(needs='title', why='no title')
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict

from flanpipe.core.config.registry import DatasetSpec, load_registry
from flanpipe.core.text.templates import DatasetTemplates, Template

BANK_FILES = {"flan2021": "flan/templates.py", "flan2022": "flan/v2/flan_templates_branched.py"}
"""Each FLAN bank's file, relative to a FLAN checkout (a clone of google-research/FLAN)."""
TYPOS = {"{hypothesis}n\n": "{hypothesis}\n\n"}
"""Flan 2022's corrections of the 2021 text (nine NLI templates ended the hypothesis with a stray n)."""
PLACEHOLDER = re.compile(r"(\{\w*\})")
"""A FLAN placeholder, as FLAN's own formatter splits a pattern (``preprocessors.py``)."""
OWN_FIELDS = ("answer", "options_")
"""FLAN fields the renderer knows itself: the answer, and the OPTIONS block at the template's place."""


class FlanBankError(ValueError):
    """A FLAN bank cannot be read: a missing checkout or file, or patterns that are not a literal."""


def read_patterns(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The ``PATTERNS`` dict of a FLAN templates file, by literal evaluation of its syntax tree.

    Nothing in the file runs: a call, a name or any other expression where the literal should be is
    refused (:class:`FlanBankError`, naming the file).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    ...     _ = f.write('PATTERNS = {"rte": [("{premise}", "{answer}")]}\\n')
    >>> read_patterns(f.name)
    {'rte': [('{premise}', '{answer}')]}
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError) as err:
        raise FlanBankError(f"{path}: cannot read FLAN's templates ({err})") from None
    nodes = [n.value for n in tree.body if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "PATTERNS" for t in n.targets)]
    if not nodes:
        raise FlanBankError(f"{path}: no top-level PATTERNS = {{...}} assignment")
    try:
        patterns = ast.literal_eval(nodes[-1])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
        raise FlanBankError(f"{path}: PATTERNS is not a literal ({err}); FLAN's files are read as "
                            "data, never executed") from None
    _check_shape(path, patterns)
    return {k: [(a, b) for a, b in v] for k, v in patterns.items()}


def _check_shape(path: Path, patterns: Any) -> None:
    if not isinstance(patterns, dict):
        raise FlanBankError(f"{path}: PATTERNS is a {type(patterns).__name__}, not a dict")
    for key, value in patterns.items():
        ok = isinstance(key, str) and isinstance(value, list | tuple) and all(
            isinstance(p, tuple | list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in value)
        if not ok:
            raise FlanBankError(f"{path}: PATTERNS[{key!r}] is not a list of (input, target) string pairs")


def fix_typos(patterns: dict[str, list[tuple[str, str]]]) -> dict[str, list[tuple[str, str]]]:
    """Flan 2022's corrections, applied where a file still has the 2021 text (idempotent).

    >>> fix_typos({"rte": [("Hypothesis: {hypothesis}n\\n{options_}", "{answer}")]})
    {'rte': [('Hypothesis: {hypothesis}\\n\\n{options_}', '{answer}')]}
    """
    def fix(text: str) -> str:
        for wrong, right in TYPOS.items():
            text = text.replace(wrong, right)
        return text
    return {k: [(fix(a), fix(b)) for a, b in v] for k, v in patterns.items()}


def bank_file(bank: str, flan_root: str | Path | None) -> Path:
    """The file a FLAN bank is read from; an error names ``templatize.flan_root`` when it is not set
    or does not hold the file."""
    if bank not in BANK_FILES:
        raise FlanBankError(f"templatize.bank: {bank!r} is not a FLAN bank; allowed: {sorted(BANK_FILES)}")
    if not flan_root:
        raise FlanBankError(f"templatize.flan_root: bank {bank} is read from a FLAN checkout; set "
                            "templatize.flan_root to one (git clone https://github.com/google-research/FLAN)")
    path = Path(flan_root) / BANK_FILES[bank]
    if not path.is_file():
        raise FlanBankError(f"templatize.flan_root: {flan_root} holds no {BANK_FILES[bank]} (bank {bank}); "
                            "point it at a clone of google-research/FLAN")
    return path


# --- the checkout's identity ---------------------------------------------------------------------

def _git_dir(folder: Path) -> Path | None:
    dot = folder / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
        text = dot.read_text("utf-8").strip()
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            return target if target.is_absolute() else (folder / target).resolve()
    return None


def git_commit(root: str | Path) -> str | None:
    """The commit checked out in the clone at ``root`` (the folder holding ``.git``), read from
    ``.git`` (HEAD, the branch's ref file or ``packed-refs``) without running git; None where
    ``root`` is not a clone (a folder inside another repository is not its clone).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / ".git/refs/heads").mkdir(parents=True)
    >>> _ = (root / ".git/HEAD").write_text("ref: refs/heads/main\\n")
    >>> _ = (root / ".git/refs/heads/main").write_text("e9e4ec6" + "0" * 33 + "\\n")
    >>> git_commit(root)
    'e9e4ec6000000000000000000000000000000000'
    """
    git = _git_dir(Path(root).resolve())
    if git is None or not (git / "HEAD").is_file():
        return None
    head = (git / "HEAD").read_text("utf-8").strip()
    if not head.startswith("ref:"):
        return head or None
    ref = head.removeprefix("ref:").strip()
    common = git
    if (git / "commondir").is_file():  # a worktree keeps its branches in the main repository
        common = (git / (git / "commondir").read_text("utf-8").strip()).resolve()
    for base in (git, common):
        if (base / ref).is_file():
            return (base / ref).read_text("utf-8").strip()
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text("utf-8").splitlines():
                sha, _, name = line.partition(" ")
                if name == ref:
                    return sha
    return None


def checkout_identity(bank: str, flan_root: str | Path | None) -> dict:
    """What a run records of its template bank: the bank, and for a FLAN bank the checkout, the file,
    its sha256, and the git commit where the checkout is a clone (else None)."""
    if bank == "flanpipe":
        return {"bank": "flanpipe"}
    path = bank_file(bank, flan_root)
    return {"bank": bank, "flan_root": str(flan_root), "file": BANK_FILES[bank],
            "git_commit": git_commit(flan_root), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# --- the field map -------------------------------------------------------------------------------

class FieldMap(BaseModel):
    """How one registry entry reads FLAN's templates (one entry of ``flan_fields.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    key: str
    """FLAN's task name (its ``PATTERNS`` key): ``bool_q`` for boolq, ``wmt16_translate`` for wmt16_*."""
    fields: dict[str, str] = {}
    """FLAN field -> a format string in flanpipe's placeholder language over the entry's schema
    (``"{passage}"``, ``"{concepts|lines}"``, ``"German"``, ``"{answer}"``)."""
    missing: dict[str, str] = {}
    """FLAN fields the data lacks, with why; a template naming one is skipped."""
    answers: dict[str, str] | None = None
    """Classification: the paper's answer string of each label."""
    listed: list[str] | None = None
    """Classification: the labels in the order FLAN's OPTIONS list them, where not the registry's."""
    answer: str | None = None
    """Generation: the answer, where FLAN's is not the registry's first target as it is (CoQA's
    numbered answers, STS-B's rounded score)."""
    empty_answer: str | None = None


@functools.cache
def field_maps() -> dict[str, FieldMap]:
    """Every registry entry's field map, ``same_as`` references resolved."""
    text = resources.files("flanpipe").joinpath("data/templates/flan_fields.yaml").read_text("utf-8")
    raw: dict[str, Any] = yaml.safe_load(text)
    out = {}
    for name, entry in raw.items():
        source = entry
        while "same_as" in source:
            source = {**raw[source["same_as"]], **{k: v for k, v in source.items() if k != "same_as"}}
        out[name] = FieldMap(dataset=name, **source)
    return out


@dataclass(frozen=True)
class Skipped:
    """A FLAN template a dataset cannot render: the field it needs and why the data lacks it."""

    needs: str
    why: str


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def convert_pattern(pattern: tuple[str, str], fields: dict[str, str], missing: dict[str, str]
                    ) -> tuple[str, str] | Skipped:
    """One FLAN (input, target) pair in flanpipe's placeholder language, or why it cannot be."""
    out = []
    for text in pattern:
        parts = []
        for piece in PLACEHOLDER.split(text):
            if not PLACEHOLDER.fullmatch(piece):
                parts.append(_escape(piece))
                continue
            name = piece[1:-1]
            if name in fields:
                parts.append(fields[name])
            elif name in OWN_FIELDS:
                parts.append(piece)
            else:
                return Skipped(name, missing.get(name, "not in the data"))
        out.append("".join(parts))
    return out[0], out[1]


class FlanTemplates(DatasetTemplates):
    """A dataset's templates from a FLAN bank: OPTIONS only where a template puts ``{options_}``."""

    bank: str
    key: str
    answer: str | None = None
    skipped: dict[int, Skipped] = {}
    absent: str | None = None
    """Why the bank has no template at all for the dataset (its file lacks the FLAN task)."""
    order: tuple[str, ...] | None = None
    """Classification: the labels in the order FLAN's OPTIONS list them (None: label order)."""

    options_suffix: ClassVar[bool] = False

    def generation_answer(self) -> str | None:
        return self.answer

    def listed(self, spec: DatasetSpec, texts: list[str]) -> list[str]:
        if self.order is None:
            return texts
        return [texts[spec.task.labels.index(label)] for label in self.order]


def convert(fmap: FieldMap, patterns: list[tuple[str, str]], bank: str, task_type: str) -> FlanTemplates:
    """A dataset's FLAN templates through its field map: each template keeps its index in FLAN's list
    as its id; one whose target is not ``{answer}`` is turned around."""
    templates, skipped = [], {}
    for i, pattern in enumerate(patterns):
        converted = convert_pattern(pattern, fmap.fields, fmap.missing)
        if isinstance(converted, Skipped):
            skipped[i] = converted
            continue
        source, target = converted
        if task_type == "generation" and "{options_}" in source:
            skipped[i] = Skipped("options_", "a generation task has no options to list")
            continue
        templates.append(Template(id=i, input=source, target=target, inverted=target != "{answer}"))
    return FlanTemplates(dataset=fmap.dataset, answers=fmap.answers, empty_answer=fmap.empty_answer,
                         templates=tuple(templates), bank=bank, key=fmap.key, answer=fmap.answer,
                         skipped=skipped, order=None if fmap.listed is None else tuple(fmap.listed))


@functools.cache
def load_flan_bank(bank: str, flan_root: str | None) -> dict[str, FlanTemplates]:
    """Every registry entry's templates from a FLAN bank (``flan2021`` or ``flan2022``)."""
    patterns = read_patterns(bank_file(bank, flan_root))
    if bank == "flan2022":
        patterns = fix_typos(patterns)
    reg = load_registry()
    out = {}
    for name, fmap in field_maps().items():
        labels = reg.datasets[name].task.labels
        if fmap.listed is not None and sorted(fmap.listed) != sorted(labels or ()):
            raise FlanBankError(f"flan_fields.yaml: {name}.listed {fmap.listed} is not an order of its "
                                f"labels {list(labels or ())}")
        out[name] = convert(fmap, patterns.get(fmap.key, []), bank, reg.datasets[name].task.type)
        if fmap.key not in patterns:
            absent = f"{BANK_FILES[bank]} has no task {fmap.key!r}"
            out[name] = out[name].model_copy(update={"absent": absent})
    return out
