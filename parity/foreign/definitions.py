"""Load only the definitions of a Python file: its imports, functions, classes and constants, never the rest.

A single-file training script keeps its model classes above module-level code that downloads a tokenizer,
reads a dataset and trains; importing it would start all that. `plan_definitions` reads the file's syntax
tree and keeps the statements that only define things (imports, `def`, `class`, docstrings, assignments
of constants and of attributes of imported modules, `try` blocks made of those); `exec_definitions` runs
the kept statements one by one in a module, so an import that fails and that no kept statement uses
(`import wandb`) is left out with a note instead of failing the load. An import runs only when the kept
definitions read a name it binds, `__all__` lists one, it binds a class-like (CapWords) name that may be
the model or its config, or it is of the standard library: a sibling evaluation module that downloads at
import (`from hellaswag import render_example`) is left out with a note when the model does not need it.
What was left out is listed with its line numbers, for the load summary. `if __name__ == "__main__":`
blocks never run on import anyway.
"""

from __future__ import annotations
import __future__

import ast
import sys
from dataclasses import dataclass, field
from types import ModuleType

# How much of a left-out statement a note quotes, and how many notes a summary lists before counting.
QUOTE_CHARS = 60
LISTED = 6


@dataclass
class LeftOut:
    """One module-level statement that was not run."""

    first_line: int
    last_line: int
    text: str  # the statement's first line, shortened

    def __str__(self) -> str:
        lines = (
            f"line {self.first_line}"
            if self.first_line == self.last_line
            else (f"lines {self.first_line}-{self.last_line}")
        )
        return f"{lines}: {self.text}"


@dataclass
class DefinitionsPlan:
    """The statements of a file to run, those left out, and the names the kept code reads."""

    kept: list[ast.stmt]
    left_out: list[LeftOut]
    used_names: set[str]  # names read by the kept statements other than imports
    orphans: list[str] = field(default_factory=list)  # names kept code reads that only left-out code binds
    relative_imports: list[LeftOut] = field(default_factory=list)
    relative_level: int = 0  # the deepest relative import (2 for `from ..x import y`), 0 for none
    left_out_binds: set[str] = field(default_factory=set)  # names only the left-out statements bind
    unneeded_imports: list[tuple[int, list[str]]] = field(default_factory=list)  # (line, names) not run
    absolute_roots: set[str] = field(default_factory=set)  # top-level names of its absolute imports


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either order of the comparison)."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1):
        return False
    sides = [node.test.left, node.test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return isinstance(node.test.ops[0], ast.Eq) and names == ["__name__"] and consts == ["__main__"]


def _bound_by_import(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The names an import statement binds (`import a.b` binds a)."""
    return [(a.asname or a.name).split(".")[0] for a in node.names]


def _is_constant(node: ast.expr, constants: set[str], modules: set[str]) -> bool:
    """A literal, container or arithmetic of literals, earlier constant, or imported module's attribute."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_constant(e, constants, modules) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is None or _is_constant(k, constants, modules) for k in node.keys) and all(
            _is_constant(v, constants, modules) for v in node.values
        )
    if isinstance(node, ast.UnaryOp):
        return _is_constant(node.operand, constants, modules)
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left, constants, modules) and _is_constant(node.right, constants, modules)
    if isinstance(node, ast.BoolOp):
        return all(_is_constant(v, constants, modules) for v in node.values)
    if isinstance(node, ast.Compare):
        return all(_is_constant(v, constants, modules) for v in [node.left, *node.comparators])
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.Attribute):  # torch.float32, math.pi: an attribute read of an imported module
        root: ast.expr = node
        while isinstance(root, ast.Attribute):
            root = root.value
        return isinstance(root, ast.Name) and root.id in modules
    return False


def _assigned_names(node: ast.stmt) -> list[str] | None:
    """The plain names an assignment binds, or None when a target is not a name (x.y = ..., x[0] = ...)."""
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[attr-defined]
    names: list[str] = []
    for t in targets:
        elts = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
        for e in elts:
            if not isinstance(e, ast.Name):
                return None
            names.append(e.id)
    return names


def _keeps(node: ast.stmt, constants: set[str], modules: set[str]) -> bool:
    """True for a statement that only defines something; updates constants and modules with what it binds."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules.update(_bound_by_import(node))
        return True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # docstrings
        return True
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        names = _assigned_names(node)
        if names is None or (node.value is not None and not _is_constant(node.value, constants, modules)):
            return False
        constants.update(names)
        return True
    if isinstance(node, ast.Try):  # try: import x / except ImportError: x = None
        parts = [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]
        return all(_keeps(s, constants, modules) for s in parts)
    return False


def _binds(node: ast.stmt) -> set[str]:
    """Names a module-level statement binds (assignment targets, loop variables, with-as, imports, defs)."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            out.add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            out.update(_bound_by_import(sub))
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(sub.name)
    return out


def _names(node: ast.AST, ctx: type) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def _global_reads(node: ast.AST) -> set[str]:
    """Names a statement reads that are not its functions' own parameters or locals (roughly: its globals)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        own = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)} | _names(node, ast.Store)
        return _names(node, ast.Load) - own
    if isinstance(node, ast.ClassDef):
        parts = [*node.bases, *node.keywords, *node.decorator_list, *node.body]
        return set().union(*(_global_reads(p) for p in parts)) if parts else set()
    return _names(node, ast.Load)


def _is_import_block(node: ast.stmt) -> bool:
    """An import, or a `try` of imports and fallback assignments; `__future__` and `*` imports excluded."""
    if isinstance(node, ast.ImportFrom):
        return node.module != "__future__" and all(a.name != "*" for a in node.names)
    if isinstance(node, ast.Import):
        return True
    if isinstance(node, ast.Try):
        parts = [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]
        return any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in parts) and all(
            _is_import_block(s) or isinstance(s, (ast.Assign, ast.AnnAssign, ast.Pass, ast.Expr))
            for s in parts
        )
    return False


def _exported(tree: ast.Module) -> set[str]:
    """The names a module-level `__all__ = [...]` (or tuple) lists."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            if isinstance(node.value, (ast.List, ast.Tuple)):
                out |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return out


def _imports_only_stdlib(node: ast.stmt) -> bool:
    """Every import in node is of the standard library (importing it has no side effects worth avoiding)."""
    imports = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    tops = [a.name.split(".")[0] for n in imports if isinstance(n, ast.Import) for a in n.names]
    tops += [
        n.module.split(".")[0] if n.module and not n.level else ""
        for n in imports
        if isinstance(n, ast.ImportFrom)
    ]
    return all(t in sys.stdlib_module_names for t in tops)


def _unneeded(kept: list[ast.stmt], needed: set[str]) -> list[ast.stmt]:
    """The kept import blocks that bind nothing needed and no class-like name (the model may be imported),
    standard-library imports aside."""
    out = []
    for node in kept:
        if not _is_import_block(node) or _imports_only_stdlib(node):
            continue
        binds = _binds(node)
        if not binds & needed and not any(b[:1].isupper() for b in binds):
            out.append(node)
    return out


def _quote(source: str, node: ast.stmt) -> str:
    """The statement's first line, shortened."""
    segment = ast.get_source_segment(source, node) or type(node).__name__
    first = segment.strip().splitlines()[0] if segment.strip() else type(node).__name__
    more = len(segment.strip().splitlines()) > 1
    if len(first) > QUOTE_CHARS:
        first, more = first[: QUOTE_CHARS - 3].rstrip(), True
    return first + (" ..." if more else "")


def plan_definitions(source: str, filename: str) -> DefinitionsPlan:
    """Split a file's module-level statements into those that only define things and the rest."""
    tree = ast.parse(source, filename=filename)
    constants: set[str] = set()
    modules: set[str] = set()
    kept: list[ast.stmt] = []
    left_out: list[LeftOut] = []
    left_binds: set[str] = set()
    for node in tree.body:
        if _is_main_guard(node):
            continue  # never runs on import
        if _keeps(node, constants, modules):
            kept.append(node)
        else:
            left_out.append(LeftOut(node.lineno, node.end_lineno or node.lineno, _quote(source, node)))
            left_binds |= _binds(node)
    used = set().union(*(_global_reads(n) for n in kept if not isinstance(n, (ast.Import, ast.ImportFrom))))
    unneeded = _unneeded(kept, used | _exported(tree))
    kept = [n for n in kept if n not in unneeded]
    kept_binds = set().union(*(_binds(n) for n in kept)) if kept else set()
    relative = [
        LeftOut(n.lineno, n.end_lineno or n.lineno, _quote(source, n))
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.level > 0
    ]
    orphans = sorted((used & left_binds) - kept_binds)
    level = max((n.level for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)), default=0)
    skipped = [(n.lineno, sorted(_binds(n))) for n in unneeded]
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {
        n.module.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and not n.level
    }
    return DefinitionsPlan(
        kept, left_out, used, orphans, relative, level, left_binds - kept_binds, skipped, roots
    )


def exec_definitions(plan: DefinitionsPlan, module: ModuleType, filename: str) -> list[str]:
    """Run the kept statements in module, one at a time; returns notes on the imports it left out.

    An import that raises ImportError is left out when no kept statement reads a name it binds; otherwise
    the ImportError propagates (the definitions need it).
    """
    notes = [
        f"line {line}: import of {', '.join(names)} left out (the definitions do not use it)"
        for line, names in plan.unneeded_imports
    ]
    # Each statement is compiled alone: carry the file's __future__ imports, not this module's.
    flags = 0
    for node in plan.kept:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            flags |= sum(getattr(__future__, a.name).compiler_flag for a in node.names)
    docstring = plan.kept[0] if plan.kept else None
    if isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant):
        module.__doc__ = docstring.value.value
    for node in plan.kept:
        code = compile(
            ast.Module(body=[node], type_ignores=[]), filename, "exec", flags=flags, dont_inherit=True
        )
        try:
            exec(code, module.__dict__)
        except ImportError as e:
            if (
                not isinstance(node, (ast.Import, ast.ImportFrom))
                or set(_bound_by_import(node)) & plan.used_names
            ):
                raise
            names = ", ".join(_bound_by_import(node))
            notes.append(
                f"line {node.lineno}: import of {names} left out ({e}; the definitions do not use it)"
            )
    return sorted(notes, key=lambda n: int(n.split(":")[0].split()[-1]))  # "line N: ...", in file order


def summary(plan: DefinitionsPlan) -> list[str]:
    """Lines for the load summary: what was left out, and names the kept code may miss because of it."""
    if not plan.left_out:
        return []
    listed = "; ".join(str(x) for x in plan.left_out[:LISTED])
    more = f"; and {len(plan.left_out) - LISTED} more" if len(plan.left_out) > LISTED else ""
    lines = [
        f"definitions only: {len(plan.left_out)} module-level statement(s) not run ({listed}{more}); "
        "--run-module imports the file as it is"
    ]
    if plan.orphans:
        lines.append(
            f"the definitions read {', '.join(plan.orphans)}, which only the left-out code sets: "
            "if building or running the model fails on it, pass --run-module"
        )
    return lines
