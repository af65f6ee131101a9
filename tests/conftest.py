"""Shared by the whole suite.

``python -m pytest`` from the repository root puts the root first on
sys.path, so the source tree's ``ring`` and ``stubdom`` would shadow the
installed ones — and after a plain ``pip install .`` the source tree has
no built extension (``ring/_ring*.so``, the guest device's preload
library): every test would fail to import it. Then the installed package
is what is tested, exactly as ``pytest`` does. A tree built in place
(``pip install -e .``) is used as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent


def _built_in_place(root: Path) -> bool:
    return any((root / "ring").glob("_ring*.so"))


if not _built_in_place(_ROOT):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
    for name in [m for m in sys.modules if m.split(".")[0] in ("ring", "stubdom")]:
        mod = sys.modules[name]
        if Path(getattr(mod, "__file__", "") or "").resolve().is_relative_to(_ROOT):
            del sys.modules[name]  # imported from the source tree before this ran


# -- fixtures shared by several test modules ------------------------------------------------------


@pytest.fixture
def other_user(tmp_path_factory: pytest.TempPathFactory):
    """Another local user, uid 65534 (tests/other_user.py): skips unless
    this is root and that user can run some Python 3.8+."""
    from other_user import find_other_user

    return find_other_user(tmp_path_factory)
