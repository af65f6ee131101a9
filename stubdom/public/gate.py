"""The SMC gate's ABI, defined once for the platform (the gate) and the stub
domain (its client): docs/smc-gate.md.

A real stub domain cannot execute SMCs for other domains: it asks Xen
through a narrow hypercall, and Xen checks that the toolstack gave it the
domain it names, stamps the client ID itself and makes the SMC. The
hypercall travels on a teeif ring (``ring``, docs/protocol.md) with its
event channel, both in :func:`gate_dir`; its entries are
``struct teeif_request``/``teeif_response`` used as follows:

    request   vcpu   = the target domid (below DOMID_FIRST_RESERVED)
              flags  = the op: GATE_OP_SMC or GATE_OP_HYP
              a      = x0..x7 (a7 is ignored: the gate stamps it)
    response  status = 0, or GATE_EPERM / GATE_EINVAL / GATE_ENOENT
              a      = the TEE's registers (all zero when status != 0)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from stubdom.optee.smc import (
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
)

__all__ = [
    "GATE_OP_SMC",
    "GATE_OP_HYP",
    "HYP_PROBE_CALLS",
    "HYP_DOMAIN_CALLS",
    "HYP_CLIENT_ID",
    "GATE_EPERM",
    "GATE_EINVAL",
    "GATE_ENOENT",
    "gate_dir",
]

# Gate ops, in the request's ``flags`` field.
GATE_OP_SMC = 1  # an SMC on behalf of the domain named in ``vcpu``; the gate stamps a7
GATE_OP_HYP = 2  # a hypervisor-class SMC (a7 = 0) from the allow-list below

# Hypervisor-class calls a stub domain may make: the probe a mediator does at
# start (optee_smc.h function IDs; any caller may issue these natively) ...
HYP_PROBE_CALLS = frozenset({
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
})
# ... and the partition life cycle, only for a domain assigned to it, named
# both in ``vcpu`` and as client ID domid + 1 in a1.
HYP_DOMAIN_CALLS = frozenset({OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED})

HYP_CLIENT_ID = 0  # OP-TEE's HYP_CLNT_ID (core/include/kernel/virtualization.h): a7 of GATE_OP_HYP

# Response statuses other than 0 (negative errno values, as Xen's hypercalls return).
GATE_EPERM = -errno.EPERM  # the domid is not assigned to this stub domain, or the op is not allowed for it
GATE_EINVAL = -errno.EINVAL  # unknown op, a reserved domid, or the TEE model failed
GATE_ENOENT = -errno.ENOENT  # no such domain on the machine


def gate_dir(runtime_dir: str | os.PathLike[str]) -> Path:
    """``<runtime_dir>/xen/gate``: where the gate's ring and event channel
    (``ring.RING_FILE``, ``ring.EVTCHN_FILE``) live."""
    return Path(runtime_dir) / "xen" / "gate"
