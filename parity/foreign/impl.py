"""The implementation under test: any nanoGPT-style `GPT` and its config, imported in isolation and adapted.

Users bisect their own model code, so the harness must run on a model.py (or a package) at any commit of
its history without editing it. `import_implementation` imports the file under a unique module name
derived from its path and contents, with its directory on sys.path only while importing, and takes
sibling modules it imported back out of sys.modules, so two implementations (or two commits of one) can
live in one process. A file is loaded definitions-only (parity/foreign/definitions.py): module-level training
code is never run, and imports it does not need may fail; `run_module=True` imports it as it is. A file
with relative imports is imported through its folder as a package (the package's `__init__.py` is not
run). The adapters of parity/foreign/adapters.py give the harness one calling convention and find the config.
`Implementation.build` builds the model with its own __init__ and records the roles of GPT-2's tensors
found in it; parity/foreign/load.py loads a checkpoint into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from torch import nn

from nanogpt.model import GPTConfig
from nanogpt.schema import record_mapping
from parity.core.errors import ImplementationError
from parity.foreign.adapters import ConfigMaker, adapted_class, config_maker
from parity.foreign.definitions import DefinitionsPlan, exec_definitions, plan_definitions, summary
from parity.foreign.discovery import PROBE_CONFIG, model_class, split_class
from parity.foreign.mapping_file import MappingFile, apply_mapping_file, read_mapping_file
from parity.foreign.raised import describe_exception, raised_at
from parity.foreign.roles import discover_roles

# Every module imported by import_implementation lives under this prefix (plus a hash) in sys.modules.
MODULE_PREFIX = "_nanogpt_parity_impl_"
# Load notes of each module imported in this process (a second import of the same sources reuses it).
_NOTES: dict[str, list[str]] = {}


# ----------------------------------------------------------------------------------------------------------
# importing in isolation


def _local_module_names(directory: Path) -> set[str]:
    """Top-level names a directory on sys.path provides: its .py files, packages and namespace dirs."""
    names = set()
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            name = entry.stem if entry.suffix == ".py" else entry.name
            if (
                (entry.is_dir() or entry.suffix == ".py")
                and name.isidentifier()
                and not name.startswith("__")
            ):
                names.add(name)
    return names


def _source_digest(path: Path) -> str:
    """A hash of the implementation's source: the package's .py files, or the file and its .py siblings."""
    h = hashlib.sha256(str(path).encode())
    files = sorted(path.rglob("*.py")) if path.is_dir() else sorted(path.parent.glob("*.py"))
    for f in files:
        h.update(str(f.relative_to(path if path.is_dir() else path.parent)).encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _isolated_import(search_dirs: list[Path], unique: str) -> Iterator[None]:
    """search_dirs on sys.path while importing; afterwards sys.path and sys.modules as before, plus `unique`.

    Modules of search_dirs already imported under the same names (another implementation's `model`, say)
    are hidden during the import and put back afterwards; the implementation's own sibling modules are
    removed from sys.modules afterwards (the implementation keeps its references to them).
    """
    saved_path = list(sys.path)
    local = set().union(*(_local_module_names(d) for d in search_dirs))
    shadowed = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in local}
    before = set(sys.modules)
    sys.path[:0] = [str(d) for d in search_dirs]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            if name != unique and not name.startswith(unique + ".") and name.split(".")[0] in local:
                del sys.modules[name]
        sys.modules.update(shadowed)


def _forget(unique: str) -> None:
    """Remove a failed import's entries from sys.modules."""
    for name in [n for n in sys.modules if n == unique or n.startswith(unique + ".")]:
        del sys.modules[name]


def _package_chain(path: Path, levels: int, unique: str) -> tuple[str, list[tuple[str, Path]]]:
    """(the file's module name, [(package name, folder)] from the top) for relative imports `levels` deep."""
    folders = [path.parents[i] for i in range(levels - 1, -1, -1)]
    names = [unique] + [f"{unique}.{'.'.join(f.name for f in folders[1 : i + 1])}" for i in range(1, levels)]
    return f"{names[-1]}.{path.stem}", list(zip(names, folders, strict=True))


def _stub_packages(chain: list[tuple[str, Path]]) -> None:
    """Register each folder as a package without running its __init__.py (which may import the world)."""
    for name, folder in chain:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def _own_package_root(path: Path, plan: DefinitionsPlan) -> Path | None:
    """The folder above the package a file imports by its own absolute name (`from mypkg.common import x`
    inside mypkg/model.py), or None; never when that name is importable already (an installed package)."""
    for folder in path.parents[:-1]:
        if folder.name in plan.absolute_roots and (folder / "__init__.py").is_file():
            try:
                found = importlib.util.find_spec(folder.name) is not None
            except (ImportError, ValueError):
                found = True
            return None if found else folder.parent
    return None


def _plan(path: Path) -> DefinitionsPlan:
    """The definitions plan of a .py file (a SyntaxError propagates: the import fails with it)."""
    try:
        return plan_definitions(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise ImplementationError(f"cannot read {path}: {e}") from e


def _load_file(
    name: str,
    path: Path,
    plan: DefinitionsPlan,
    run_module: bool,
    notes: list[str],
    package_dir: Path | None = None,
) -> ModuleType:
    """Execute a .py file as module `name` (a package's __init__ with package_dir): definitions or all."""
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(package_dir)] if package_dir else None
    )
    if spec is None or spec.loader is None:
        raise ImplementationError(f"{path}: not importable as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and relative imports look the module up by name
    if run_module:
        spec.loader.exec_module(module)
    else:
        notes += summary(plan)
        notes += exec_definitions(plan, module, str(path))
    return module


def _take_gpt(module: ModuleType, where: str, class_name: str | None, notes: list[str]) -> type[nn.Module]:
    """The model class (parity/foreign/discovery.py): named, nanoGPT's GPT, or the one found by probing."""
    gpt, how = model_class(
        module, where, class_name, lambda c: config_maker(module, c, where).make(PROBE_CONFIG)
    )
    if how:
        notes.append(f"model: {gpt.__name__} ({how})")
    return gpt


def _import_package(path: Path, unique: str, run_module: bool, notes: list[str]) -> tuple[ModuleType, str]:
    """A package directory: its __init__.py (definitions only, unless run_module), then its model.py when
    __init__ has no GPT. Submodules that __init__ imports itself run as they are."""
    module = sys.modules.get(unique)
    if module is None:
        init = path / "__init__.py"
        module = _load_file(unique, init, _plan(init), run_module, notes, package_dir=path)
    if not hasattr(module, "GPT") and (path / "model.py").is_file():
        name = unique + ".model"
        inner = sys.modules.get(name) or _load_file(
            name, path / "model.py", _plan(path / "model.py"), run_module, notes
        )
        return inner, str(path / "model.py")
    return module, str(path)


def _import_file(path: Path, unique: str, run_module: bool, notes: list[str]) -> ModuleType:
    """A .py file, through its folder as a package when it has relative imports."""
    plan = _plan(path)
    levels = plan.relative_level
    if levels == 0:
        name = unique
    else:
        if levels > len(path.parents) - 1:
            raise ImplementationError(f"{path}: a relative import goes above the file system's root")
        name, chain = _package_chain(path, levels, unique)
        if name not in sys.modules:
            _stub_packages(chain)
        notes.append(
            f"imported as {'.'.join([chain[0][1].name, *name.split('.')[1:]])} through its package folder "
            f"{chain[0][1]} (relative imports; the package's __init__.py not run)"
        )
    module = sys.modules.get(name)  # same path, same sources: already imported in this process
    if module is None:
        start = len(notes)
        module = _load_file(name, path, plan, run_module, notes)
        if not run_module and not hasattr(module, "GPT") and "GPT" in plan.left_out_binds:
            # GPT comes from module-level code (`GPT, GPTConfig = make_classes()`): nothing to load
            # without it.
            del sys.modules[name]
            del notes[start:]  # the notes of the definitions-only pass
            notes.append(f"GPT is set by module-level code of {path.name}, so the file was imported as it is")
            module = _load_file(name, path, plan, True, notes)
    return module


def _import_classes(
    path: Path, run_module: bool, class_name: str | None = None
) -> tuple[ModuleType, type[nn.Module], ConfigMaker, list[str]]:
    """Import path (checked by check_implementation_path); return (module, GPT, config maker, load notes)."""
    is_package = path.is_dir() and (path / "__init__.py").is_file()
    if path.is_dir() and not is_package:
        path = path / "model.py"
    unique = MODULE_PREFIX + _source_digest(path) + ("_run" if run_module else "")
    where = str(path)
    notes = list(_NOTES.get(unique, []))
    fresh = unique not in sys.modules
    try:
        search_dirs = [path.parent]
        if not is_package and (root := _own_package_root(path, _plan(path))) is not None:
            search_dirs.append(root)  # after path.parent: the package's own siblings come first
            if fresh:
                notes.append(f"{root} on the path while importing (the file imports its own package by name)")
        with _isolated_import(search_dirs, unique):
            if is_package:
                module, where = _import_package(path, unique, run_module, notes if fresh else [])
            else:
                module = _import_file(path, unique, run_module, notes if fresh else [])
        model_notes: list[str] = []
        gpt = _take_gpt(module, where, class_name, model_notes)
        maker = config_maker(module, gpt, where)
    except ImplementationError:
        _forget(unique)
        raise
    except (Exception, SystemExit) as e:  # any failure of the user's code at import time
        _forget(unique)
        hint = ""
        if isinstance(e, ImportError) and "relative import" in str(e):
            hint = "; pass the package folder (the directory with __init__.py) as --impl"
        root = path if is_package else path.parent
        text = describe_exception(e, root).replace(unique + ".", "")  # the package's name, not our alias
        raise ImplementationError(f"cannot import {path}: {text}{hint}") from e
    _NOTES[unique] = notes
    return module, gpt, maker, [*notes, *model_notes]


@dataclass
class Implementation:
    """A nanoGPT-style implementation: its module, GPT and GPTConfig, and the adapted GPT the harness uses."""

    label: str
    source: Path
    module: ModuleType
    gpt_cls: type[nn.Module]
    config_cls: type | None  # None when a factory classmethod makes the config
    config_maker: ConfigMaker | None = None  # default: config_cls fed the fields it declares
    notes: list[str] = field(default_factory=list)  # how it was loaded, for the load summary
    mapping_file: MappingFile | None = (
        None  # --mapping: where GPT-2's tensors live, over the discovered roles
    )
    adapted_cls: type[nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.adapted_cls = adapted_class(self.gpt_cls)
        loss = self.adapted_cls._parity_loss
        loss.notes = self.notes  # a labels convention is found on the first forward with targets
        if loss.parameter != "targets" and not loss.may_shift:
            self.notes.append(f"loss: {loss.describe()}")
        if self.config_maker is None:
            assert self.config_cls is not None
            self.config_maker = ConfigMaker(self.config_cls.__name__, self.config_cls)

    @property
    def root(self) -> Path:
        """The folder of the implementation's own files (the package, or the model file's folder)."""
        return self.source if self.source.is_dir() else self.source.parent

    @property
    def has_configure_optimizers(self) -> bool:
        """True when the implementation defines configure_optimizers."""
        return callable(getattr(self.gpt_cls, "configure_optimizers", None))

    def build(self, config: GPTConfig) -> tuple[nn.Module, str]:
        """A fresh adapted model from the implementation's own __init__; (model, what it printed)."""
        assert self.config_maker is not None
        try:
            cfg = self.config_maker.make(config)
        except ImplementationError as e:  # the config's own code raised: say where
            where = raised_at(e.__cause__, self.root) if e.__cause__ is not None else ""
            raise ImplementationError(f"{e}{where}") from e
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # upstream prints its parameter count
                model = self.adapted_cls(cfg)
        except Exception as e:
            raise ImplementationError(
                f"{self.gpt_cls.__name__}(config) raised {describe_exception(e, self.root)}"
            ) from e
        roles = discover_roles(model, config)
        if self.mapping_file is not None:  # --mapping: the user's entries over the discovered ones
            roles = apply_mapping_file(self.mapping_file, roles, model, config)
        record_mapping(model, roles)
        return model, printed.getvalue()


def reference_implementation() -> Implementation:
    """The reference nanoGPT (nanogpt.model), the default implementation under test."""
    import nanogpt.model as module

    return Implementation("nanogpt (reference)", Path(module.__file__), module, module.GPT, module.GPTConfig)


def check_implementation_path(path: str | os.PathLike[str]) -> Path:
    """The resolved path, when it names what import_implementation takes; else ImplementationError.

    Nothing is imported: `pytest parity/ --impl` refuses a mistyped path with this before any work, and
    leaves the importing to the child process that runs the tested code.
    """
    resolved = Path(split_class(str(path))[0]).expanduser().resolve()
    if not resolved.exists():
        raise ImplementationError(
            f"{path}: no such file or directory here (at this commit); pass a model.py file or a package "
            "directory exposing GPT and GPTConfig"
        )
    if resolved.is_dir():
        if not (resolved / "__init__.py").is_file() and not (resolved / "model.py").is_file():
            raise ImplementationError(
                f"{resolved}: a directory without __init__.py or model.py; pass a model.py file or a package "
                "directory exposing GPT and GPTConfig"
            )
    elif resolved.suffix != ".py":
        raise ImplementationError(f"{resolved}: not a .py file; pass a model.py file or a package directory")
    return resolved


def import_implementation(
    path: str | os.PathLike[str], run_module: bool = False, mapping: str | os.PathLike[str] | None = None
) -> Implementation:
    """Import a model.py file (definitions only, unless run_module) or a package directory, in isolation;
    mapping: a mapping file (parity/foreign/mapping_file.py) overriding the discovered roles."""
    resolved = check_implementation_path(path)
    mapping_file = read_mapping_file(mapping) if mapping is not None else None
    module, gpt, maker, notes = _import_classes(resolved, run_module, split_class(str(path))[1])
    if maker.how != "GPTConfig":
        notes = [*notes, f"config: {maker.how}"]
    return Implementation(str(path), resolved, module, gpt, maker.config_cls, maker, notes, mapping_file)
