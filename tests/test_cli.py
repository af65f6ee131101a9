"""The command line's own behaviour (sub-commands are tested with their packages)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["bench", "soak"])
def test_bench_extra_missing_is_named(command):
    # a child interpreter in which hdrhistogram cannot be imported, as after
    # a plain `pip install .`
    code = ("import sys; sys.modules['hdrh'] = None\n"
            "from stubdom.cli import main\n"
            f"sys.exit(main([{command!r}, '--help']))\n")
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"stubdom-teed {command}: needs the bench extra "
                                "(pip install 'stubdom-teed[bench]'): module 'hdrh' is missing")


def test_ta_images_writes_every_model_ta_as_tee_supplicant_names_them(tmp_path, capsys):
    from stubdom.cli import main
    from stubdom.optee import parse_ta_image
    from stubdom.tee.tas import builtin_tas

    assert main(["ta-images", str(tmp_path / "ta"), "--size", "8192"]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(written) == sorted(str(tmp_path / "ta" / f"{u}.ta") for u in builtin_tas())
    for u in builtin_tas():
        image = (tmp_path / "ta" / f"{u}.ta").read_bytes()
        assert len(image) == 8192 and parse_ta_image(image, u).uuid == u
    with pytest.raises(SystemExit) as e:
        main(["ta-images", str(tmp_path / "x"), "--size", "10"])
    assert e.value.code == 2
