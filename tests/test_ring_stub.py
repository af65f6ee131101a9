"""ring/_ring.pyi, the hand-written types of the compiled ``ring._ring``,
names exactly what the built module has (docs/development.md, "Checks")."""

import ast
from pathlib import Path

import ring
from ring._lib import lib

STUB = Path(ring.__file__).resolve().parent / "_ring.pyi"


def _stub_lib_names() -> set[str]:
    tree = ast.parse(STUB.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Lib"]
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    names |= {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return names


def test_stub_names_every_constant_and_function_of_the_built_module() -> None:
    assert _stub_lib_names() == {n for n in dir(lib) if not n.startswith("_")}


def test_stub_constants_are_ints() -> None:
    for name in _stub_lib_names():
        if name.isupper():
            assert isinstance(getattr(lib, name), int), name
