"""README's "Running the daemon by hand", followed exactly as written, twice
in a row (issue 15): the platform, the daemon, ctl, SIGHUP, the daemon
stopped with SIGTERM and started again while the platform runs, ctl again,
the platform stopped with SIGTERM. Each line of the README's block is one
step here, run as the installed command with real processes and real
signals; between steps the test waits for what a person would wait for
(the line the process prints), bounded by a hang guard only.

What must hold: every command succeeds; after the restart the daemon serves
the platform's domains again and their guests' workload succeeds again;
the platform's SIGTERM stops the daemon too; nothing is left in the runtime
directory, so that the second pass starts as the first did.
"""

from __future__ import annotations

import re
import shlex
import signal

import yaml

from process_support import REPO, Proc, command, config_file, left_in, run

DOMAINS = (0, 1, 2)  # configs/xen.yaml's


def by_hand_block() -> list[str]:
    """The commands of README's section, comments cut."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Running the daemon by hand", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_block_is_what_this_test_follows():
    lines = by_hand_block()
    assert lines[0].startswith("stubdom-teed platform --config configs/xen.yaml &")
    assert [line for line in lines if line.startswith("kill -TERM $daemon")] != []
    assert lines[-1] == "kill -TERM $platform"


class Follower:
    """Runs README's block line by line (the config file swapped for one
    whose runtime directory is the test's)."""

    def __init__(self, tmp_path, cfg, run_no: int) -> None:
        self.tmp_path = tmp_path
        self.cfg = cfg
        self.runtime = tmp_path / "rt"
        self.run_no = run_no
        self.procs: dict[str, Proc] = {}
        self.started = 0
        self.daemon_starts = 0
        self.platform_mark = 0  # offset in the platform's output of the last daemon start

    def args(self, line: str) -> list[str]:
        return [str(self.cfg) if a == "configs/xen.yaml" else a for a in shlex.split(line)]

    def step(self, line: str) -> None:
        if m := re.fullmatch(r"stubdom-teed (.*) & (\w+)=\$!", line):
            self.background(self.args(m.group(1)), m.group(2))
        elif line.startswith("stubdom-teed ctl "):
            self.ctl(self.args(line)[1:])
        elif m := re.fullmatch(r"kill -(\w+) \$(\w+)", line):
            self.kill(getattr(signal, "SIG" + m.group(1)), m.group(2))
        else:
            raise AssertionError(f"README's block has a line this test cannot follow: {line!r}")

    def background(self, args: list[str], var: str) -> None:
        self.started += 1
        proc = Proc(command(*args), self.tmp_path, f"run{self.run_no}-{self.started}-{var}")
        self.procs[var] = proc
        if var == "platform":
            proc.wait_for("platform: waiting up to")
            return
        platform = self.procs["platform"]
        proc.wait_for("stubdom-teed: listening on ")
        self.daemon_starts += 1
        if self.daemon_starts == 1:  # the platform creates its domains, their drivers bind
            for domid in DOMAINS:
                platform.wait_for(f"platform: d{domid} (")
            self.platform_mark = platform.wait_for(" up: ", count=len(DOMAINS))
        else:  # started again: it makes the daemon serve them again
            mark = self.platform_mark
            for domid in DOMAINS:
                platform.wait_for(f"platform: d{domid} created again in the restarted stubdom-teed", after=mark)
            self.platform_mark = platform.wait_for(" up: ", count=len(DOMAINS), after=mark)

    def ctl(self, args: list[str]) -> None:
        proc = run(*args)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stdout, proc.stderr,
                                                              *(p.describe() for p in self.procs.values()))
        answer = yaml.safe_load(proc.stdout)
        what = args[-1] if args[-2] == str(self.cfg) else args[-2]
        if what == "list":
            assert [d["domid"] for d in answer["domains"]] == list(DOMAINS), answer
        elif what == "stats":
            assert list(answer["domains"]) == ["1"], answer
        elif what == "policy":
            assert answer["domid"] == 1 and answer["served"] is True, answer
            assert answer["limits"]["running"]["calls_in_flight"] >= 1, answer

    def kill(self, sig: int, var: str) -> None:
        proc = self.procs[var]
        proc.signal(sig)
        if sig == signal.SIGHUP:
            proc.wait_for("event=reloaded", stream="err")
        elif var == "daemon":
            assert proc.wait() == 0, proc.describe()
            assert "event=stopped" in proc.err(), proc.describe()
        else:  # the platform: it stops, the daemon with it
            platform = proc
            assert platform.wait() == 0, platform.describe()
            assert platform.out().splitlines()[-1] == "platform: stopped; isolation oracle: 0 violations"
            daemon = self.procs["daemon"]
            assert daemon.wait() == 0, daemon.describe()
            assert "the platform closed the SMC gate" in daemon.err(), daemon.describe()

    def check_served_again(self) -> None:
        """After the restart: a round in which every guest's workload ran."""
        platform = self.procs["platform"]
        ok = " ".join(f"d{d} ok 4 workloads" for d in DOMAINS)
        deadline_mark = self.platform_mark
        while True:
            end = platform.wait_for("platform: round ", after=deadline_mark)
            line = platform.out()[end:].split("\n", 1)[0]
            if all(f"d{d} ok 4 workloads" in line for d in DOMAINS):
                return
            assert "FAILED" not in line, (ok, line, platform.describe())
            deadline_mark = end

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def test_readme_by_hand_flow_twice_in_a_row_with_a_daemon_restart(tmp_path):
    cfg = config_file(tmp_path)
    lines = by_hand_block()
    for run_no in (1, 2):
        follower = Follower(tmp_path, cfg, run_no)
        try:
            for line in lines:
                if line == "kill -TERM $platform":
                    follower.check_served_again()
                follower.step(line)
        finally:
            follower.stop_all()
        # nothing of either process is left: the next pass starts as this one did
        assert left_in(tmp_path / "rt") == [], run_no
