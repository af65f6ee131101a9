"""What a guest is told when its policy refuses a call.  A refused call
never reaches the TEE; the answer is one a real Linux guest
(drivers/tee/optee/smc_abi.c) handles without hanging or crashing.
docs/config.md has the table with the reasoning per case."""

from __future__ import annotations

from dataclasses import dataclass

from stubdom.optee.smc import (
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_RETURN_ENOTAVAIL,
    OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
    smc_name,
)
from stubdom.optee.smccc import function_id
from stubdom.optee.teec import (
    TEEC_ERROR_ACCESS_DENIED,
    TEEC_ERROR_BUSY,
    TEEC_ORIGIN_COMMS,
    teec_name,
)

__all__ = [
    "Refusal",
    "REASON_DOMAIN_DISABLED",
    "REASON_CLASS_DENIED",
    "REASON_RATE_LIMITED",
    "REASON_TA_DENIED",
    "REASONS",
    "refuse_function",
    "refuse_rate",
    "refuse_ta",
]

REASON_DOMAIN_DISABLED = "domain_disabled"
REASON_CLASS_DENIED = "class_denied"
REASON_RATE_LIMITED = "rate_limited"
REASON_TA_DENIED = "ta_denied"
REASONS = (REASON_DOMAIN_DISABLED, REASON_CLASS_DENIED, REASON_RATE_LIMITED, REASON_TA_DENIED)

Regs = tuple[int, int, int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A policy refusal.

    reason      one of REASONS: the key for statistics
    detail      one line for the log (function, class, TA...)
    a0          the register answer: the guest resumes with (a0, 0, ..., 0)
    msg_ret     when not None, the refusal is message-level: whoever holds
                the call's optee_msg_arg copy writes ``ret = msg_ret`` and
    msg_origin  ``ret_origin = msg_origin`` into the guest's argument and
                resumes the guest with a0 = OPTEE_SMC_RETURN_OK (every other
                register 0), as the mediator does for its own refusals of a
                parameter.  ``a0`` is then the answer for an embedder that
                must refuse before it has copied the argument.
    """

    reason: str
    detail: str
    a0: int
    msg_ret: int | None = None
    msg_origin: int | None = None

    @property
    def regs(self) -> Regs:
        """The registers of a register-level answer."""
        return (self.a0, 0, 0, 0, 0, 0, 0, 0)

    @property
    def message_level(self) -> bool:
        return self.msg_ret is not None

    def describe(self) -> str:
        """For logs: reason, detail and what the guest gets."""
        if self.msg_ret is not None:
            assert self.msg_origin is not None
            got = f"ret={teec_name(self.msg_ret)} origin={self.msg_origin}"
        else:
            got = f"a0={self.a0:#x}"
        return f"{self.reason}: {self.detail} -> {got}"


def refuse_function(reason: str, a0: int, function_class: str, why: str) -> Refusal:
    """A refused function (domain disabled or class not allowed).

    Every function gets UNKNOWN_FUNCTION (as Xen answers SMCs it does not
    mediate), except the SHM-cache pair: Linux retries ENABLE_SHM_CACHE until
    OK and DISABLE_SHM_CACHE until ENOTAVAIL, sleeping on its call queue in
    between, so any other answer hangs its probe or its shutdown.  They get
    what an OP-TEE built without CFG_PREALLOC_RPC_CACHE answers: ENABLE ->
    OK (nothing will be cached), DISABLE -> ENOTAVAIL (nothing is cached)."""
    function = function_id(a0)
    detail = f"{smc_name(a0)} ({function_class}): {why}"
    if function == OPTEE_SMC_ENABLE_SHM_CACHE:
        return Refusal(reason, detail, OPTEE_SMC_RETURN_OK)
    if function == OPTEE_SMC_DISABLE_SHM_CACHE:
        return Refusal(reason, detail, OPTEE_SMC_RETURN_ENOTAVAIL)
    return Refusal(reason, detail, OPTEE_SMC_RETURN_UNKNOWN_FUNCTION)


def refuse_rate(a0: int, why: str) -> Refusal:
    """A standard call over the domain's rate: message-level TEEC_ERROR_BUSY
    from TEEC_ORIGIN_COMMS.  Not ETHREAD_LIMIT: Linux then sleeps until
    another of its calls completes, which never happens if the domain has
    none in flight.  The register fallback is ENOTAVAIL (what OP-TEE answers
    a yielding call it will not serve), which Linux turns into
    TEEC_ERROR_COMMUNICATION."""
    return Refusal(REASON_RATE_LIMITED, f"{smc_name(a0)}: {why}", OPTEE_SMC_RETURN_ENOTAVAIL,
                   TEEC_ERROR_BUSY, TEEC_ORIGIN_COMMS)


def refuse_ta(ta: str, why: str) -> Refusal:
    """OPEN_SESSION of a TA the policy does not allow: message-level
    TEEC_ERROR_ACCESS_DENIED from TEEC_ORIGIN_COMMS (the refusal comes from
    the mediator, not the TEE); no session is created anywhere."""
    return Refusal(REASON_TA_DENIED, f"OPEN_SESSION {ta}: {why}", OPTEE_SMC_RETURN_ENOTAVAIL,
                   TEEC_ERROR_ACCESS_DENIED, TEEC_ORIGIN_COMMS)


