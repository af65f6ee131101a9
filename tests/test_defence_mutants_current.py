"""The defence mutants (tests/defence_mutants.py, run by hand) still name
code that exists: each pattern a mutant replaces occurs exactly once in its
file, so that a refactoring that moves a defence is caught here, in CI,
rather than by the next person who runs the mutants."""

from __future__ import annotations

import pytest

from defence_mutants import MUTANTS, ROOT


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_mutants_pattern_is_in_its_file_once(mutant) -> None:
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.name}: update the mutant for {mutant.path}"
