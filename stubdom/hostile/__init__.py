"""Hostile guests: a guest kernel that does what a malicious kernel can,
through the same trap entry as an honest guest and its own memory only, and
the harness the attack tests share (placements, an honest domain running
beside the attack, checks after the attacker is destroyed).

    p = make_platform(tmp_path / "m", "stubdom")   # or "el2": PLACEMENTS
    p.create_domain(DomainSpec(1, nr_pages=512))
    evil = HostileGuest(p, 1)
    with HonestLoad(p, 2):
        assert evil.start(evil.page() + 8)[0] == OPTEE_SMC_RETURN_EBADADDR
    destroy_and_check(p, evil)

The attack table as loops (a soak run, the benchmark's bystander sweep):

    with HonestLoad(p, 2), AttackLoop(p, HostileGuest(p, 1), ATTACKS["flood_calls"], victim=2) as a:
        ...

The soak run (``stubdom-teed soak``) lives in ``stubdom.hostile.soak``
(it needs the bench extra). See docs/security.md and docs/soak.md.
"""

from .attacks import ATTACKS as ATTACKS
from .attacks import Attack as Attack
from .attacks import AttackLoop as AttackLoop
from .errors import AttackOutcomeWrong as AttackOutcomeWrong
from .errors import DaemonDied as DaemonDied
from .errors import GuestOutOfPages as GuestOutOfPages
from .errors import HonestLoadFailed as HonestLoadFailed
from .errors import HostileError as HostileError
from .errors import UnexpectedRpc as UnexpectedRpc
from .guest import M32 as M32
from .guest import HostileGuest as HostileGuest
from .guest import ShmAllocHook as ShmAllocHook
from .harness import HonestLoad as HonestLoad
from .harness import destroy_all_and_check as destroy_all_and_check
from .harness import destroy_and_check as destroy_and_check
from .platforms import BASE_CAPS as BASE_CAPS
from .platforms import PLACEMENTS as PLACEMENTS
from .platforms import PROFILES as PROFILES
from .platforms import HostilePlatform as HostilePlatform
from .platforms import SmcRecord as SmcRecord
from .platforms import make_platform as make_platform
from .platforms import tee_smcs as tee_smcs
from .platforms import tee_smcs_of as tee_smcs_of
from .race import Scribbler as Scribbler

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackLoop",
    "AttackOutcomeWrong",
    "BASE_CAPS",
    "DaemonDied",
    "GuestOutOfPages",
    "HonestLoad",
    "HonestLoadFailed",
    "HostileError",
    "HostileGuest",
    "HostilePlatform",
    "M32",
    "PLACEMENTS",
    "PROFILES",
    "Scribbler",
    "ShmAllocHook",
    "SmcRecord",
    "UnexpectedRpc",
    "destroy_all_and_check",
    "destroy_and_check",
    "make_platform",
    "tee_smcs",
    "tee_smcs_of",
]
