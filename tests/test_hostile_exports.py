"""The hostile-guest library's façade exports what it says it does."""

import stubdom.hostile as hostile


def test_facade_exports():
    assert sorted(hostile.__all__) == hostile.__all__
    for name in hostile.__all__:
        assert getattr(hostile, name) is not None, name
    assert hostile.PLACEMENTS == ("el2", "stubdom")
