"""Every package façade is in the one style (docs/development.md, "Package
façades"): it re-exports each public name with ``from .module import Name as
Name`` and lists exactly those names, sorted, in a literal ``__all__``; a
name loaded on first use (PEP 562 ``__getattr__``) is listed too and
resolves."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import ring
import stubdom

ROOTS = (Path(stubdom.__file__).resolve().parent, Path(ring.__file__).resolve().parent)


def _facades() -> list[tuple[str, Path]]:
    found = []
    for root in ROOTS:
        for init in sorted(root.rglob("__init__.py")):
            rel = init.parent.relative_to(root.parent)
            found.append((".".join(rel.parts), init))
    return found


# packages whose __init__ re-exports nothing (a docstring, a version)
NOT_FACADES = frozenset({"stubdom", "stubdom.tee.fs"})
FACADES = [(name, path) for name, path in _facades() if name not in NOT_FACADES]


def _reexports(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert all(a.name != "*" for a in node.names), "a star import: re-export each name"
            names += [a.asname for a in node.names if a.asname is not None and a.asname == a.name]
    return names


def _literal_all(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return value
    raise AssertionError("no __all__")


def test_every_package_is_listed() -> None:
    assert {"stubdom.optee", "stubdom.xen", "stubdom.mediator", "ring"} <= {name for name, _ in FACADES}


@pytest.mark.parametrize(("package", "path"), FACADES, ids=[name for name, _ in FACADES])
def test_facade(package: str, path: Path) -> None:
    tree = ast.parse(path.read_text())
    exported = _literal_all(tree)
    assert exported == sorted(set(exported))
    # every `X as X` is public, except submodules named for their attribute
    module = importlib.import_module(package)
    reexported = set(_reexports(tree))
    submodules = {n for n in reexported if type(getattr(module, n)).__name__ == "module" and n not in exported}
    assert reexported - submodules <= set(exported)
    for name in exported:
        assert hasattr(module, name), name
