"""Options of ``stubdom-teed soak``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from stubdom.public.logformat import LOG_LEVEL_HELP, LOG_LEVELS, log_to

from .errors import HostileError
from .platforms import PLACEMENTS

__all__ = ["SoakOptions", "SoakOptionsError", "parse_soak_options"]

FIRST_DOMID = 1  # d0 is the hardware domain: the soak's domains are domUs


class SoakOptionsError(HostileError):
    """Options that cannot describe a soak run."""

    def __init__(self, option: str, value, why: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"{option} {value!r}: {why}")


@dataclass(frozen=True)
class SoakOptions:
    placement: str = "stubdom"
    domains: int = 6
    hostile: int = 3
    minutes: float = 30.0
    seed: int = 1
    sample_every: float = 5.0
    churn_every: float = 60.0
    attack_every: float = 10.0
    out: Path = Path("soak-out")
    work_dir: Path | None = None
    progress: bool = False
    honest_pages: int = 1024
    hostile_pages: int = 4096
    call_timeout_ms: int = 30_000
    # The attacks look back over the SMCs of one iteration (a slice of the
    # record): enough for any iteration with every other domain busy.
    smc_history: int = 65536

    @property
    def honest(self) -> int:
        return self.domains - self.hostile

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    def as_json(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["work_dir"] = str(self.work_dir) if self.work_dir is not None else None
        return d

    def validate(self) -> None:
        if self.placement not in PLACEMENTS:
            raise SoakOptionsError("--placement", self.placement, f"one of {PLACEMENTS}")
        if self.domains < 1:
            raise SoakOptionsError("--domains", self.domains, "at least one domain")
        if not 0 <= self.hostile <= self.domains:
            raise SoakOptionsError("--hostile", self.hostile, f"between 0 and --domains ({self.domains})")
        if self.hostile and not self.honest:
            raise SoakOptionsError("--hostile", self.hostile, "attacks need at least one honest victim domain")
        for name in ("minutes", "sample_every", "churn_every", "attack_every"):
            if not getattr(self, name) > 0:
                raise SoakOptionsError("--" + name.replace("_", "-"), getattr(self, name), "must be positive")


def _parser() -> argparse.ArgumentParser:
    d = SoakOptions()
    p = argparse.ArgumentParser(
        prog="stubdom-teed soak",
        description="Run honest and hostile domains for a while, check the invariants every few seconds, "
        "measure memory, write soak.json and soak.md. Exit 0: no violation and memory flat (or the run "
        "too short to judge); 1: a violation or memory not flat; 2: bad options.",
    )
    p.add_argument("--placement", choices=PLACEMENTS, default=d.placement,
                   help=f"el2 (in-process mediator) or stubdom (a real daemon) (default {d.placement})")
    p.add_argument("--domains", type=int, default=d.domains, help=f"domains in all (default {d.domains})")
    p.add_argument("--hostile", type=int, help="of which hostile (default: half, rounded down)")
    p.add_argument("--minutes", type=float, default=d.minutes, help=f"duration (default {d.minutes:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of every random choice (default {d.seed})")
    p.add_argument("--sample-every", type=float, default=d.sample_every, metavar="S",
                   help=f"seconds between samples and invariant checks (default {d.sample_every:g})")
    p.add_argument("--churn-every", type=float, default=d.churn_every, metavar="S",
                   help=f"seconds between destroy-check-recreate of each hostile domain (default {d.churn_every:g})")
    p.add_argument("--attack-every", type=float, default=d.attack_every, metavar="S",
                   help=f"seconds each attack runs before the next (default {d.attack_every:g})")
    p.add_argument("--out", type=Path, default=d.out, help=f"where soak.json and soak.md go (default {d.out})")
    p.add_argument("--work-dir", type=Path, help="where the machine's files go (default: a temporary directory)")
    p.add_argument("--call-timeout-ms", type=int, default=d.call_timeout_ms,
                   help=f"stubdom: how long a guest call waits for the daemon (default {d.call_timeout_ms})")
    p.add_argument("--progress", action="store_true", help="a progress bar on stderr")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                   help=LOG_LEVEL_HELP + " (default warning)")
    return p


def parse_soak_options(argv: list[str]) -> SoakOptions:
    a = _parser().parse_args(argv)
    log_to(logging.getLogger("stubdom"), a.log_level)  # the one log format (stubdom.public.logformat)
    opts = SoakOptions(placement=a.placement, domains=a.domains,
                       hostile=a.domains // 2 if a.hostile is None else a.hostile, minutes=a.minutes, seed=a.seed,
                       sample_every=a.sample_every, churn_every=a.churn_every, attack_every=a.attack_every,
                       out=a.out, work_dir=a.work_dir, progress=a.progress, call_timeout_ms=a.call_timeout_ms)
    opts.validate()
    return opts
