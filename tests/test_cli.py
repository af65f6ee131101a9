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


@pytest.mark.parametrize("argv", [[], ["platform"], ["ctl"], ["demo"], ["bench"], ["soak"], ["guest-dev"]])
def test_every_command_takes_one_log_level_with_help(argv, capsys):
    """Issue 15, item 12: one --log-level on every command, saying what it does."""
    from stubdom.cli import main
    from stubdom.public import LOG_LEVEL_HELP

    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--log-level {debug,info,warning,error}" in out, out
    assert " ".join(LOG_LEVEL_HELP.split()) in out, out


def test_the_platforms_log_lines_are_key_value(tmp_path):
    """The platform's logging, the daemon's format: time, level, event, the
    domain as domid=, the rest as msg= (stubdom.public.logformat)."""
    import io
    import logging

    from stubdom.public import log_to

    stream = io.StringIO()
    logger = log_to(logging.getLogger("stubdom.test_cli"), "info", stream)
    trap = logging.getLogger("stubdom.platform.stubdom")
    trap.handlers[:] = logger.handlers
    trap.propagate = False
    trap.setLevel(logging.INFO)
    try:
        trap.warning("d%d: no answer from stubdom-teed within %g s: ENOTAVAIL", 3, 5.0)
    finally:
        trap.handlers[:] = []
        trap.propagate = True
    line = stream.getvalue().strip()
    assert line.split(" ", 1)[1] == ('level=warning event=trap_path domid=3 msg="no answer from stubdom-teed '
                                     'within 5 s: ENOTAVAIL"'), line


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
