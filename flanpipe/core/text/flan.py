"""FLAN's own templates, read from a FLAN checkout as data and mapped onto the registry's schemas.

The paper's code (google-research/FLAN) publishes its instruction templates as one Python dict
literal, ``PATTERNS``: FLAN's task name to ten ``(input, target)`` format strings. A bank
(``templatize.bank``) names the file; ``templatize.flan_root`` names the checkout:

- ``flan2021``: ``flan/templates.py``, the 2021 paper's templates;
- ``flan2022``: ``flan/v2/flan_templates_branched.py``, the same 61 tasks as corrected for Flan 2022
  (with the ``{hypothesis}n\\n`` typo of nine NLI templates fixed: :func:`fix_typos`).

The file is parsed, never imported or executed: :func:`read_patterns` evaluates the ``PATTERNS``
node with :func:`ast.literal_eval`, and refuses a file where anything but a literal stands there.

Flan 2022's own tasks, chain-of-thought among them, are in ``flan/v2/templates.py`` (:data:`V2_FILE`),
read for the ``flan2022`` bank where a field map names that file. Its ``PATTERNS`` is a literal
followed by assignments that share one task's list with another
(``PATTERNS["cot_input_inversion_gsm8k"] = PATTERNS["cot_stream_general_input_inversion"]``);
:func:`read_assigned` reads it with a restricted evaluator of literals, ``+`` of strings, names set
earlier in the file and subscripts, and refuses anything else, naming the file and line. A task's
inversion (a field map's ``inversion``) gives the dataset's turned-around templates.

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

from flanpipe.core.config.registry import DatasetSpec, active_extras, load_registry
from flanpipe.core.text.templates import DatasetTemplates, Template

BANK_FILES = {"flan2021": "flan/templates.py", "flan2022": "flan/v2/flan_templates_branched.py"}
"""Each FLAN bank's file, relative to a FLAN checkout (a clone of google-research/FLAN)."""
V2_FILE = "flan/v2/templates.py"
"""Flan 2022's own tasks (chain-of-thought, dialog, ...), read for the ``flan2022`` bank alone."""
V2_BANKS = ("flan2022",)
"""The banks that read :data:`V2_FILE` (FLAN 2021 had no such tasks)."""
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


# --- a restricted reader for FLAN v2's templates.py ----------------------------------------------

class _Refused(Exception):
    def __init__(self, node: ast.AST, why: str):
        super().__init__(why)
        self.line, self.why = getattr(node, "lineno", 0), why


def _deepcopy_args(stmt: ast.stmt) -> set[int]:
    """The name nodes a statement passes to ``copy.deepcopy`` alone: a copy cannot change them."""
    out = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "deepcopy" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "copy" and len(node.args) == 1 and not node.keywords \
                and isinstance(node.args[0], ast.Name):
            out.add(id(node.args[0]))
    return out


def _base_name(target: ast.expr) -> str | None:
    """``PATTERNS`` for a target ``PATTERNS``, ``PATTERNS["k"]`` or ``PATTERNS["k"][0]``; else None."""
    while isinstance(target, ast.Subscript):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


class _Reader:
    """Top-level assignments of a file, evaluated over a few node kinds, in file order."""

    def __init__(self) -> None:
        self.bound: dict[str, Any] = {}
        self.spoiled: dict[str, tuple[int, str]] = {}  # name -> (line, why it cannot be read)

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool | None):
            return node.value
        if isinstance(node, ast.Tuple | ast.List):
            items = [self.value(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise _Refused(node, "a ** unpacking in a dict")
            return {self.value(k): self.value(v) for k, v in zip(node.keys, node.values, strict=True)}
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.value(node.left), self.value(node.right)
            if not (isinstance(left, str) and isinstance(right, str)):
                raise _Refused(node, "a + of something other than two strings")
            return left + right
        if isinstance(node, ast.Name):
            if node.id in self.spoiled:
                line, why = self.spoiled[node.id]
                raise _Refused(node, f"{node.id} is set at line {line} by {why}")
            if node.id not in self.bound:
                raise _Refused(node, f"the name {node.id} is not set earlier in the file by an assignment "
                                     "this reader evaluates")
            return self.bound[node.id]
        if isinstance(node, ast.Subscript):
            container, key = self.value(node.value), self.value(node.slice)
            try:
                return container[key]
            except (KeyError, IndexError, TypeError):
                raise _Refused(node, f"no item {key!r} in a {type(container).__name__}") from None
        raise _Refused(node, f"a {type(node).__name__} (only literals, + of strings, names and subscripts "
                             "are read)")

    def store(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.bound[target.id] = value
            self.spoiled.pop(target.id, None)
            return
        container, key = self.value(target.value), self.value(target.slice)  # a Subscript
        if not isinstance(container, dict | list):
            raise _Refused(target, f"an item assignment into a {type(container).__name__}")
        try:
            container[key] = value
        except (IndexError, TypeError):
            raise _Refused(target, f"no item {key!r} to assign in a list") from None

    def statement(self, stmt: ast.stmt) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else []
        names = [_base_name(t) for t in targets]
        if targets and all(names):
            try:
                value = self.value(stmt.value)
                for target in targets:
                    self.store(target, value)
                return
            except _Refused as refused:
                for name in names:
                    self.spoiled[name] = (refused.line, f"code this reader does not run ({refused.why})")
        # not evaluated: a name it mentions may change in ways the reader cannot follow
        copied, first = _deepcopy_args(stmt), {}
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and id(node) not in copied and \
                    (node.id in self.bound or node.id in self.spoiled) and node.id not in names:
                first[node.id] = min(first.get(node.id, node.lineno), node.lineno)
        for name, line in first.items():
            self.spoiled[name] = (line, f"a statement this reader does not run ({type(stmt).__name__})")


def read_assigned(path: str | Path, name: str = "PATTERNS") -> Any:
    """The value a file's top-level code gives ``name``, read without running any of it.

    Top-level assignments to a name or to a subscript of one (``A = {...}``, ``A["k"] = A["j"]``) are
    evaluated in file order over literals, ``+`` of two strings, names set earlier this way and
    subscripts; every other statement (imports, functions, classes, loops, calls) is skipped. A name
    that such a statement mentions (but for ``copy.deepcopy(A)``, a copy) or that an assignment sets
    by any other expression cannot be read: asking for it, or for a value built from it, raises
    :class:`FlanBankError` naming the file and line.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    ...     _ = f.write('P = {"a": [("x" "y", "z")]}\\nP["b"] = P["a"]\\nQ = copy.deepcopy(P)\\n')
    >>> read_assigned(f.name, "P")
    {'a': [('xy', 'z')], 'b': [('xy', 'z')]}
    >>> read_assigned(f.name, "Q")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flanpipe.core.text.flan.FlanBankError: ...:3: Q cannot be read without running the file: ...
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError) as err:
        raise FlanBankError(f"{path}: cannot read FLAN's templates ({err})") from None
    reader = _Reader()
    for stmt in tree.body:
        reader.statement(stmt)
    if name in reader.spoiled:
        line, why = reader.spoiled[name]
        raise FlanBankError(f"{path}:{line}: {name} cannot be read without running the file: it is set "
                            f"by {why}; FLAN's files are read as data, never executed")
    if name not in reader.bound:
        raise FlanBankError(f"{path}: no top-level {name} = ... assignment")
    return reader.bound[name]


def read_v2_patterns(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The ``PATTERNS`` of FLAN v2's ``templates.py`` (:func:`read_assigned`), checked for shape."""
    patterns = read_assigned(path, "PATTERNS")
    _check_shape(Path(path), patterns)
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
    file: str | None = None
    """The FLAN file holding the task, where not the bank's own: :data:`V2_FILE` for Flan 2022's own
    tasks (chain-of-thought), read for the :data:`V2_BANKS` alone."""
    inversion: str | None = None
    """FLAN's task that turns this one around (``cot_input_inversion_gsm8k``): its templates follow
    the task's own, turned around, numbered on from them. With it, every template of ``key`` poses the
    dataset's task, whatever its target (a CoT target carries the rationale before the answer)."""


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


def convert(fmap: FieldMap, patterns: list[tuple[str, str]], bank: str, task_type: str,
            turned: list[tuple[str, str]] | None = None) -> FlanTemplates:
    """A dataset's FLAN templates through its field map: each template keeps its index in FLAN's list
    as its id; one whose target is not ``{answer}`` is turned around. With ``turned`` (the templates
    of the map's ``inversion`` task), every template of ``patterns`` poses the task, and those of
    ``turned`` follow, turned around, with ids from ``len(patterns)`` on."""
    templates, skipped = [], {}
    numbered = [(i, p, fmap.inversion is None or i < len(patterns))
                for i, p in enumerate([*patterns, *(turned or [])])]
    for i, pattern, forward in numbered:
        converted = convert_pattern(pattern, fmap.fields, fmap.missing)
        if isinstance(converted, Skipped):
            skipped[i] = converted
            continue
        source, target = converted
        if task_type == "generation" and "{options_}" in source:
            skipped[i] = Skipped("options_", "a generation task has no options to list")
            continue
        inverted = not forward if fmap.inversion is not None else target != "{answer}"
        templates.append(Template(id=i, input=source, target=target, inverted=inverted))
    return FlanTemplates(dataset=fmap.dataset, answers=fmap.answers, empty_answer=fmap.empty_answer,
                         templates=tuple(templates), bank=bank, key=fmap.key, answer=fmap.answer,
                         skipped=skipped, order=None if fmap.listed is None else tuple(fmap.listed))


def load_flan_bank(bank: str, flan_root: str | None) -> dict[str, FlanTemplates]:
    """Every registry entry's templates from a FLAN bank (``flan2021`` or ``flan2022``), the active
    extra registries' included where the field map has them (the chain-of-thought datasets)."""
    return _load_flan_bank(bank, flan_root, active_extras())


@functools.cache
def _load_flan_bank(bank: str, flan_root: str | None, extras: tuple[str, ...]) -> dict[str, FlanTemplates]:
    patterns = read_patterns(bank_file(bank, flan_root))
    if bank == "flan2022":
        patterns = fix_typos(patterns)
    reg = load_registry()
    maps = {name: fmap for name, fmap in field_maps().items() if name in reg.datasets}
    v2 = None
    if bank in V2_BANKS and any(fmap.file == V2_FILE for fmap in maps.values()):
        path = Path(flan_root) / V2_FILE
        if not path.is_file():
            raise FlanBankError(f"templatize.flan_root: {flan_root} holds no {V2_FILE}, where bank {bank} "
                                "reads Flan 2022's chain-of-thought templates; point it at a clone of "
                                "google-research/FLAN")
        v2 = read_v2_patterns(path)
    out = {}
    for name, fmap in maps.items():
        labels = reg.datasets[name].task.labels
        if fmap.listed is not None and sorted(fmap.listed) != sorted(labels or ()):
            raise FlanBankError(f"flan_fields.yaml: {name}.listed {fmap.listed} is not an order of its "
                                f"labels {list(labels or ())}")
        source, file = patterns, BANK_FILES[bank]
        if fmap.file is not None:
            source, file = (v2 or {}), fmap.file
        turned = None if fmap.inversion is None else source.get(fmap.inversion, [])
        out[name] = convert(fmap, source.get(fmap.key, []), bank, reg.datasets[name].task.type, turned)
        if fmap.file is not None and bank not in V2_BANKS:
            absent = f"{fmap.file} is read for bank(s) {', '.join(V2_BANKS)} alone; {bank} had no such task"
            out[name] = out[name].model_copy(update={"absent": absent})
        elif fmap.key not in source:
            absent = f"{file} has no task {fmap.key!r}"
            out[name] = out[name].model_copy(update={"absent": absent})
    return out
