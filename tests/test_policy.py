"""Policy: function classes of every OP-TEE SMC ID, allow/deny, TA lists,
the token bucket on a fake clock, refusals, swap and snapshots."""

from __future__ import annotations

import textwrap
import uuid

import pytest

import stubdom.optee.smc as smc
import stubdom.policy as policy_pkg
from stubdom.config import parse_config
from stubdom.optee.teec import TEEC_ERROR_ACCESS_DENIED, TEEC_ERROR_BUSY, TEEC_ORIGIN_COMMS
from stubdom.policy import (
    CLASS_MEMBERS,
    FUNCTION_CLASSES,
    PolicyEngine,
    Refusal,
    TokenBucket,
    function_class,
)

TA_A = uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")
TA_B = uuid.UUID("5b9e0e40-2636-11e1-ad9e-0002a5d5c51b")
TA_C = uuid.UUID("d96a5b40-c3e5-21e3-8794-1002a5d5c61b")

EXPECTED_CLASS = {
    "OPTEE_SMC_CALLS_COUNT": "info",
    "OPTEE_SMC_CALLS_UID": "info",
    "OPTEE_SMC_CALLS_REVISION": "info",
    "OPTEE_SMC_CALL_GET_OS_UUID": "info",
    "OPTEE_SMC_CALL_GET_OS_REVISION": "info",
    "OPTEE_SMC_EXCHANGE_CAPABILITIES": "capabilities",
    "OPTEE_SMC_GET_SHM_CONFIG": "shm_config",
    "OPTEE_SMC_ENABLE_SHM_CACHE": "shm_cache",
    "OPTEE_SMC_DISABLE_SHM_CACHE": "shm_cache",
    "OPTEE_SMC_GET_THREAD_COUNT": "thread_count",
    "OPTEE_SMC_CALL_WITH_ARG": "std_call",
    "OPTEE_SMC_CALL_WITH_RPC_ARG": "std_call",
    "OPTEE_SMC_CALL_WITH_REGD_ARG": "std_call",
    "OPTEE_SMC_CALL_RETURN_FROM_RPC": "rpc_return",
    "OPTEE_SMC_ENABLE_ASYNC_NOTIF": "async_notif",
    "OPTEE_SMC_GET_ASYNC_NOTIF_VALUE": "async_notif",
    "OPTEE_SMC_GET_PROTMEM_CONFIG": "protmem",
    "OPTEE_SMC_CALL_LOAD_IMAGE": "platform",
    "OPTEE_SMC_BOOT_SECONDARY": "platform",
    "OPTEE_SMC_L2CC_MUTEX": "platform",
    "OPTEE_SMC_VM_CREATED": "hypervisor",
    "OPTEE_SMC_VM_DESTROYED": "hypervisor",
}

UNKNOWN = smc.OPTEE_SMC_RETURN_UNKNOWN_FUNCTION


def config(text: str = ""):
    return parse_config(textwrap.dedent(text), "t.yaml")


# -- function classes --------------------------------------------------------------


def test_every_function_id_has_its_class():
    # SMC_NAMES is every OPTEE_SMC_* function ID stubdom.optee knows
    assert set(smc.SMC_NAMES.values()) == set(EXPECTED_CLASS)
    for fid, name in smc.SMC_NAMES.items():
        assert function_class(fid) == EXPECTED_CLASS[name], name


def test_class_members_partition_the_ids():
    seen = [fid for members in CLASS_MEMBERS.values() for fid in members]
    assert len(seen) == len(set(seen)) == len(smc.SMC_NAMES)
    assert set(FUNCTION_CLASSES) == set(CLASS_MEMBERS)


@pytest.mark.parametrize("a0", [
    0, 0x32000000, 0xB2000015, 0xBF00FF02, 0x84000000,        # free or other owners
    smc.OPTEE_SMC_CALL_WITH_ARG | smc.OPTEE_SMC_64,           # the SMC64 twin
    0xFFFFFFFF_00000000,                                      # W0 = 0, only the upper half set
])
def test_unknown_ids(a0):
    assert function_class(a0) == "unknown"


@pytest.mark.parametrize("upper", [1, 0xDEAD, 0xFFFFFFFF])
def test_the_class_is_w0s(upper):
    # an SMC32 function ID is W0 (DEN0028): x0's upper half does not change it
    for fid, name in smc.SMC_NAMES.items():
        assert function_class(upper << 32 | fid) == EXPECTED_CLASS[name], name


@pytest.mark.parametrize("a0", [-1, 1 << 64, 1.0, True])
def test_function_class_refuses_non_registers(a0):
    with pytest.raises(ValueError):
        function_class(a0)


def test_exports():
    for name in policy_pkg.__all__:
        assert hasattr(policy_pkg, name)
    assert {"PolicyEngine", "Refusal", "function_class"} <= set(policy_pkg.__all__)


# -- allow / deny -----------------------------------------------------------------------


def test_default_allows_everything_but_hypervisor():
    eng = PolicyEngine(config())
    for fid, name in smc.SMC_NAMES.items():
        r = eng.check_call(1, fid, 0.0)
        if EXPECTED_CLASS[name] == "hypervisor":
            assert r is not None and r.reason == "class_denied" and r.regs == (UNKNOWN, 0, 0, 0, 0, 0, 0, 0)
        else:
            assert r is None, name


def test_denied_class_gets_unknown_function():
    eng = PolicyEngine(config("defaults: {deny_classes: [std_call, info]}\n"))
    r = eng.check_call(3, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0)
    assert r == Refusal("class_denied", "OPTEE_SMC_CALL_WITH_ARG (std_call): class 'std_call' is not "
                        "allowed to d3", UNKNOWN)
    assert r.regs == (UNKNOWN, 0, 0, 0, 0, 0, 0, 0) and not r.message_level
    assert eng.check_call(3, smc.OPTEE_SMC_CALLS_UID, 0.0).a0 == UNKNOWN
    assert eng.check_call(3, smc.OPTEE_SMC_EXCHANGE_CAPABILITIES, 0.0) is None


def test_allow_list_limits_to_it_plus_rpc_return():
    eng = PolicyEngine(config("defaults: {allow_classes: [info, capabilities, std_call]}\n"))
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is None
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_RETURN_FROM_RPC, 0.0) is None
    assert eng.check_call(1, smc.OPTEE_SMC_GET_THREAD_COUNT, 0.0).reason == "class_denied"


def test_denied_shm_cache_answers_as_an_optee_without_the_cache():
    # Linux loops on ENABLE until OK and on DISABLE until ENOTAVAIL
    eng = PolicyEngine(config("defaults: {deny_classes: [shm_cache]}\n"))
    en = eng.check_call(1, smc.OPTEE_SMC_ENABLE_SHM_CACHE, 0.0)
    dis = eng.check_call(1, smc.OPTEE_SMC_DISABLE_SHM_CACHE, 0.0)
    assert en.reason == dis.reason == "class_denied"
    assert en.regs == (smc.OPTEE_SMC_RETURN_OK, 0, 0, 0, 0, 0, 0, 0)
    assert dis.regs == (smc.OPTEE_SMC_RETURN_ENOTAVAIL, 0, 0, 0, 0, 0, 0, 0)


def test_disabled_domain_refuses_all_but_rpc_return():
    eng = PolicyEngine(config("""\
        domains:
          - {domid: 2, enabled: false}
        """))
    r = eng.check_call(2, smc.OPTEE_SMC_CALLS_UID, 0.0)
    assert r.reason == "domain_disabled" and r.a0 == UNKNOWN
    assert eng.check_call(2, smc.OPTEE_SMC_DISABLE_SHM_CACHE, 0.0).a0 == smc.OPTEE_SMC_RETURN_ENOTAVAIL
    assert eng.check_call(2, smc.OPTEE_SMC_CALL_RETURN_FROM_RPC, 0.0) is None
    assert eng.check_open_session(2, TA_A).reason == "ta_denied"
    assert eng.check_call(1, smc.OPTEE_SMC_CALLS_UID, 0.0) is None  # defaults: enabled


# -- TA lists ---------------------------------------------------------------------------


def test_ta_allow_and_deny():
    eng = PolicyEngine(config(f"""\
        defaults: {{ta_deny: [{TA_C}]}}
        domains:
          - {{domid: 1, ta_allow: [{TA_A}]}}
        """))
    assert eng.check_open_session(1, TA_A) is None
    r = eng.check_open_session(1, TA_B)
    assert r == Refusal("ta_denied", f"OPEN_SESSION {TA_B}: not in d1's ta_allow",
                        smc.OPTEE_SMC_RETURN_ENOTAVAIL, TEEC_ERROR_ACCESS_DENIED, TEEC_ORIGIN_COMMS)
    assert r.message_level
    # domain 1 inherits ta_deny from defaults; an unknown domain has no allow list
    assert eng.check_open_session(1, TA_C).detail == f"OPEN_SESSION {TA_C}: denied to d1 (ta_deny)"
    assert eng.check_open_session(9, TA_B) is None
    assert eng.check_open_session(9, TA_C).reason == "ta_denied"
    with pytest.raises(TypeError):
        eng.check_open_session(1, str(TA_A))


# -- token bucket -------------------------------------------------------------------------


def test_bucket_burst_then_refill():
    b = TokenBucket(10.0, 3, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(100.09)
    assert b.take(100.1)          # exactly one token after 0.1 s at 10/s
    assert not b.take(100.1)
    assert b.tokens(200.0) == 3   # capped at burst


def test_bucket_clock_going_backwards_refills_nothing():
    b = TokenBucket(1.0, 1, now=5.0)
    assert b.take(5.0)
    assert not b.take(4.0)
    assert not b.take(5.5)
    assert b.take(6.0)


def test_bucket_reconfigured_keeps_tokens_capped():
    b = TokenBucket(1.0, 10, now=0.0)
    for _ in range(4):
        b.take(0.0)
    assert b.reconfigured(2.0, 3).tokens(0.0) == 3
    assert b.reconfigured(2.0, 20).tokens(0.0) == 6
    assert b.reconfigured(2.0, 20).tokens(1.0) == 8


@pytest.mark.parametrize("rate,burst", [(0, 1), (-1.0, 1), (1.0, 0), (1.0, 1.5)])
def test_bucket_refuses_bad_parameters(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


RATE = "defaults: {rate: {calls_per_second: 2, burst: 2}}\n"


def test_rate_limit_on_std_calls():
    eng = PolicyEngine(config(RATE))
    call = smc.OPTEE_SMC_CALL_WITH_ARG
    assert eng.check_call(1, call, 10.0) is None
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_REGD_ARG, 10.0) is None
    r = eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_RPC_ARG, 10.0)
    assert r == Refusal("rate_limited", "OPTEE_SMC_CALL_WITH_RPC_ARG: d1 is over 2 calls/s (burst 2)",
                        smc.OPTEE_SMC_RETURN_ENOTAVAIL, TEEC_ERROR_BUSY, TEEC_ORIGIN_COMMS)
    assert r.describe() == ("rate_limited: OPTEE_SMC_CALL_WITH_RPC_ARG: d1 is over 2 calls/s (burst 2) "
                            "-> ret=TEEC_ERROR_BUSY origin=2")
    assert eng.check_call(2, call, 10.0) is None  # buckets are per domain
    assert eng.check_call(1, call, 10.5) is None  # one token back after 0.5 s
    assert eng.check_call(1, call, 10.5) is not None


def test_rate_limit_never_refuses_return_from_rpc_nor_fast_calls():
    eng = PolicyEngine(config(RATE))
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is None
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is None
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is not None
    # the bucket is empty, yet every RPC return of the admitted calls passes
    for _ in range(1000):
        assert eng.check_call(1, smc.OPTEE_SMC_CALL_RETURN_FROM_RPC, 0.0) is None
        assert eng.check_call(1, smc.OPTEE_SMC_GET_THREAD_COUNT, 0.0) is None
    # and RPC returns took no token: exactly one is back after 0.5 s
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.5) is None
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.5) is not None


def test_refusals_are_counted():
    eng = PolicyEngine(config(RATE + "domains: [{domid: 4, deny_classes: [info]}]\n"))
    for _ in range(3):
        eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0)
    eng.check_call(4, smc.OPTEE_SMC_CALLS_UID, 0.0)
    stats = eng.statistics()
    assert dict(stats.refusals[1]) == {"rate_limited": 1}
    assert dict(stats.refusals[4]) == {"class_denied": 1}
    eng.forget(1)
    assert 1 not in eng.statistics().refusals


# -- swap and snapshots ----------------------------------------------------------------------


def test_swap_keeps_snapshots():
    eng = PolicyEngine(config("domains: [{domid: 1}]\n"))
    before = eng.snapshot(1)
    eng.swap(config("domains: [{domid: 1, enabled: false, deny_classes: [std_call]}]\n"))
    after = eng.snapshot(1)
    assert (before.generation, after.generation) == (0, 1)
    assert before.policy.enabled and not after.policy.enabled
    # a call started before the swap finishes under the policy it started with
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0, view=before) is None
    assert eng.check_open_session(1, TA_A, view=before) is None
    # a new call sees the new policy
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0).reason == "domain_disabled"
    assert eng.check_open_session(1, TA_A).reason == "ta_denied"
    assert eng.config.policy_for(1) is after.policy


def test_a_generation_shares_one_view_per_domain():
    # views are immutable: the calls of one generation share a domain's
    eng = PolicyEngine(config("domains: [{domid: 1}, {domid: 2, enabled: false}]\n"))
    one = eng.snapshot(1)
    assert eng.snapshot(1) is one and eng.snapshot(2) is not one
    assert (one.domid, eng.snapshot(2).domid) == (1, 2) and not eng.snapshot(2).policy.enabled
    eng.forget(1)  # a destroyed domain's view goes with it; the next one is the same policy
    assert eng.snapshot(1) == one
    eng.swap(config("domains: [{domid: 1, enabled: false}]\n"))
    assert eng.snapshot(1).generation == 1 and not eng.snapshot(1).policy.enabled
    assert eng.snapshot(2).generation == 1 and eng.snapshot(2).policy.enabled  # the defaults now
    assert one.generation == 0 and one.policy.enabled  # a view taken before keeps its policy


def test_swap_rate_limit_changes():
    eng = PolicyEngine(config(RATE))
    for _ in range(2):
        assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is None
    # same limit: the bucket (now empty) is kept
    eng.swap(config(RATE))
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is not None
    # a larger burst keeps the (empty) bucket's tokens, refills at the new rate
    eng.swap(config("defaults: {rate: {calls_per_second: 10, burst: 5}}\n"))
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is not None
    assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.1) is None
    # no limit any more
    eng.swap(config())
    for _ in range(10):
        assert eng.check_call(1, smc.OPTEE_SMC_CALL_WITH_ARG, 0.1) is None


def test_defaults_apply_to_unknown_domains():
    eng = PolicyEngine(config("""\
        defaults:
          deny_classes: [std_call]
        domains:
          - {domid: 0, deny_classes: []}
        """))
    assert eng.check_call(0, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0) is None
    assert eng.check_call(12, smc.OPTEE_SMC_CALL_WITH_ARG, 0.0).reason == "class_denied"
    assert eng.snapshot(12).policy is eng.config.default_policy
