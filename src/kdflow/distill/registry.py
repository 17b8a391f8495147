"""What each pre-training method needs, read without importing the methods (nor torch).

A method module (``kdflow/distill/<name>.py``, or a file listed under ``method_modules:`` in the
config) starts with a plain-literal ``DECLARATION = {...}``:

    name       the value of ``method:`` in a pre-training run
    student    ``trained`` (the pretrain job trains it with the module's registered ``Method``),
               ``checkpoint`` (the run's ``checkpoint:`` is converted) or ``none`` (no pre-training:
               transfer starts from a seeded random init)
    teacher    ``None``, ``logits`` or ``features``: what the method reads from the run's teacher
    loads_teacher  ``True`` (default): the pretrain job loads the teacher and passes it to the
               method; ``False``: the teacher's outputs come from an artefact made beforehand
               (KDEP replay), and the job passes only the teacher's file, to check the artefact
               was made with it
    artefacts  teacher-derived inputs made by other rules: ``svd`` (the teacher's SVD weights on
               the run's ``<name>.svd_subset`` option, default its data), ``soft_labels`` (the
               store named by the run's ``<name>.soft_labels`` option) and ``kdep_targets`` (the
               teacher-feature store named by the run's ``<name>.targets`` option)
    head       whether the student may have a classification head (evaluated on the pre-training
               dataset's test split); its size comes from ``Method.head_classes`` at run time,
               which may also leave it out (0 classes) when the run's options use no logits
    options    JSON schema of the run's option block, the key named after the method (every
               property with its ``x-role``), or ``None``

Config validation, the Snakemake input functions, config hashing and the pretrain job read these
declarations; nothing outside the method's module names it. Declarations are parsed with ``ast``
(``ast.literal_eval``), so building the DAG never imports torch.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent
STUDENT_KINDS = ("trained", "checkpoint", "none")
TEACHER_OUTPUTS = (None, "logits", "features")
ARTEFACTS = ("svd", "soft_labels", "kdep_targets")
_FIELDS = {"name", "student", "teacher", "loads_teacher", "artefacts", "head", "options"}


class DeclarationError(ValueError):
    """A method module whose DECLARATION is missing, not a literal, or inconsistent."""


@dataclass(frozen=True)
class Declaration:
    name: str
    module: str  # the declaring file
    student: str = "trained"
    teacher: str | None = None
    loads_teacher: bool = True
    artefacts: tuple[str, ...] = ()
    head: bool = False
    options: dict | None = None
    builtin: bool = True

    @property
    def trains(self) -> bool:
        return self.student == "trained"


def _literal_declaration(path: Path) -> dict | None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "DECLARATION" for t in targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError as exc:
                raise DeclarationError(f"{path}: DECLARATION must be a plain literal ({exc})") from None
    return None


def read_declaration(path: str | Path, builtin: bool = False) -> Declaration | None:
    """The declaration of one module file (None for a module that declares no method)."""
    path = Path(path)
    if not path.is_file():
        raise DeclarationError(f"method module not found: {path}")
    raw = _literal_declaration(path)
    if raw is None:
        return None
    unknown = set(raw) - _FIELDS
    if unknown or "name" not in raw:
        raise DeclarationError(f"{path}: DECLARATION needs 'name' and knows only {sorted(_FIELDS)} "
                               f"(unknown: {sorted(unknown)})")
    decl = Declaration(module=str(path), builtin=builtin, **{**raw, "artefacts": tuple(raw.get("artefacts", ()))})
    _check(decl)
    return decl


def _check(decl: Declaration) -> None:
    where = f"{decl.module}: DECLARATION of {decl.name!r}"
    if decl.student not in STUDENT_KINDS:
        raise DeclarationError(f"{where}: student {decl.student!r} is not one of {STUDENT_KINDS}")
    if decl.teacher not in TEACHER_OUTPUTS:
        raise DeclarationError(f"{where}: teacher {decl.teacher!r} is not one of {TEACHER_OUTPUTS}")
    unknown = set(decl.artefacts) - set(ARTEFACTS)
    if unknown:
        raise DeclarationError(f"{where}: unknown artefacts {sorted(unknown)} (known: {ARTEFACTS})")
    if "svd" in decl.artefacts and decl.teacher != "features":
        raise DeclarationError(f"{where}: the svd artefact is made from a teacher's features (teacher: features)")
    if not decl.loads_teacher and not decl.artefacts:
        raise DeclarationError(f"{where}: a method that does not load its teacher reads its outputs from an artefact")
    if not decl.trains and (decl.teacher or decl.artefacts or decl.head):
        raise DeclarationError(f"{where}: a method that does not train takes no teacher, artefacts or head")
    if decl.options is not None and decl.options.get("type") != "object":
        raise DeclarationError(f"{where}: options must be a JSON schema of type object")


@functools.lru_cache(maxsize=None)
def _declarations(extra: tuple[str, ...]) -> dict[str, Declaration]:
    found: dict[str, Declaration] = {}
    files = [(p, True) for p in sorted(BUILTIN_DIR.glob("*.py"))] + [(Path(p), False) for p in extra]
    for path, builtin in files:
        decl = read_declaration(path, builtin=builtin)
        if decl is None:
            continue
        if decl.name in found:
            raise DeclarationError(f"method {decl.name!r} is declared twice: {found[decl.name].module} and {path}")
        found[decl.name] = decl
    return found


def declarations(method_modules=()) -> dict[str, Declaration]:
    """Every built-in method, plus those of the given module files (the config's
    ``method_modules``)."""
    return _declarations(tuple(str(Path(p)) for p in method_modules))
