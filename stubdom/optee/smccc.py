"""SMC Calling Convention function-ID encoding (Arm DEN0028).

Values and field layout as in Linux ``include/linux/arm-smccc.h`` and Xen
``xen/arch/arm/include/asm/smccc.h``:

    bit 31      1 = fast call, 0 = yielding (standard) call
    bit 30      1 = SMC64, 0 = SMC32
    bits 29:24  owning entity number (OEN)
    bits 23:16  must be zero for fast calls (SMCCC 1.3 reuses bit 16 as the
                SVE hint; callees ignore it) -- reported, never validated here
    bits 15:0   function number

A function ID is the low 32 bits of x0/w0; the upper half of x0 is ignored
(Xen's mediator truncates x0 to 32 bits before dispatching).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FunctionIdOutOfRange

__all__ = [
    "ARM_SMCCC_STD_CALL",
    "ARM_SMCCC_FAST_CALL",
    "ARM_SMCCC_TYPE_SHIFT",
    "ARM_SMCCC_SMC_32",
    "ARM_SMCCC_SMC_64",
    "ARM_SMCCC_CALL_CONV_SHIFT",
    "ARM_SMCCC_OWNER_MASK",
    "ARM_SMCCC_OWNER_SHIFT",
    "ARM_SMCCC_FUNC_MASK",
    "ARM_SMCCC_OWNER_ARCH",
    "ARM_SMCCC_OWNER_CPU",
    "ARM_SMCCC_OWNER_SIP",
    "ARM_SMCCC_OWNER_OEM",
    "ARM_SMCCC_OWNER_STANDARD",
    "ARM_SMCCC_OWNER_STANDARD_HYP",
    "ARM_SMCCC_OWNER_VENDOR_HYP",
    "ARM_SMCCC_OWNER_TRUSTED_APP",
    "ARM_SMCCC_OWNER_TRUSTED_APP_END",
    "ARM_SMCCC_OWNER_TRUSTED_OS",
    "ARM_SMCCC_OWNER_TRUSTED_OS_END",
    "ARM_SMCCC_FUNCID_CALL_COUNT",
    "ARM_SMCCC_FUNCID_CALL_UID",
    "ARM_SMCCC_FUNCID_REVISION",
    "SMCCC_RET_UNKNOWN_FUNCTION",
    "FunctionId",
    "smccc_call_val",
    "decode_function_id",
    "function_id",
    "is_trusted_os_owner",
]

# Call type, bit 31 (linux/arm-smccc.h: ARM_SMCCC_{STD,FAST}_CALL, TYPE_SHIFT).
ARM_SMCCC_STD_CALL = 0
ARM_SMCCC_FAST_CALL = 1
ARM_SMCCC_TYPE_SHIFT = 31

# Calling convention, bit 30 (linux/arm-smccc.h; Xen calls them ARM_SMCCC_CONV_32/64).
ARM_SMCCC_SMC_32 = 0
ARM_SMCCC_SMC_64 = 1
ARM_SMCCC_CALL_CONV_SHIFT = 30

ARM_SMCCC_OWNER_MASK = 0x3F  # linux/arm-smccc.h
ARM_SMCCC_OWNER_SHIFT = 24  # linux/arm-smccc.h
ARM_SMCCC_FUNC_MASK = 0xFFFF  # linux/arm-smccc.h

# Owning entity numbers (linux/arm-smccc.h; Xen asm/smccc.h).
ARM_SMCCC_OWNER_ARCH = 0
ARM_SMCCC_OWNER_CPU = 1
ARM_SMCCC_OWNER_SIP = 2
ARM_SMCCC_OWNER_OEM = 3
ARM_SMCCC_OWNER_STANDARD = 4
ARM_SMCCC_OWNER_STANDARD_HYP = 5  # Xen: ARM_SMCCC_OWNER_HYPERVISOR
ARM_SMCCC_OWNER_VENDOR_HYP = 6  # linux/arm-smccc.h (newer)
ARM_SMCCC_OWNER_TRUSTED_APP = 48
ARM_SMCCC_OWNER_TRUSTED_APP_END = 49
ARM_SMCCC_OWNER_TRUSTED_OS = 50
ARM_SMCCC_OWNER_TRUSTED_OS_END = 63

# Generic per-owner query functions (Xen asm/smccc.h ARM_SMCCC_*_FID; DEN0028).
ARM_SMCCC_FUNCID_CALL_COUNT = 0xFF00
ARM_SMCCC_FUNCID_CALL_UID = 0xFF01
ARM_SMCCC_FUNCID_REVISION = 0xFF03

# a0 for an unknown function: -1 as a 32-bit value (DEN0028; Xen
# ARM_SMCCC_ERR_UNKNOWN_FUNCTION; OP-TEE OPTEE_SMC_RETURN_UNKNOWN_FUNCTION).
SMCCC_RET_UNKNOWN_FUNCTION = 0xFFFFFFFF

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class FunctionId:
    """A decoded SMCCC function ID (the low 32 bits of a0)."""

    fast: bool
    smc64: bool
    owner: int
    number: int
    value: int

    @property
    def yielding(self) -> bool:
        """True for a yielding ("standard") call."""
        return not self.fast

    @property
    def reserved_bits(self) -> int:
        """Bits 23:16 (MBZ for fast calls; bit 16 is SMCCC 1.3's SVE hint)."""
        return (self.value >> 16) & 0xFF


def smccc_call_val(fast: bool, smc64: bool, owner: int, number: int) -> int:
    """Build a function ID as ARM_SMCCC_CALL_VAL does, but refuse out-of-range
    fields instead of masking them."""
    if not isinstance(owner, int) or not 0 <= owner <= ARM_SMCCC_OWNER_MASK:
        raise FunctionIdOutOfRange(f"SMCCC owner {owner!r} is not in 0..{ARM_SMCCC_OWNER_MASK}")
    if not isinstance(number, int) or not 0 <= number <= ARM_SMCCC_FUNC_MASK:
        raise FunctionIdOutOfRange(
            f"SMCCC function number {number!r} is not in 0..{ARM_SMCCC_FUNC_MASK:#x}"
        )
    call_type = ARM_SMCCC_FAST_CALL if fast else ARM_SMCCC_STD_CALL
    conv = ARM_SMCCC_SMC_64 if smc64 else ARM_SMCCC_SMC_32
    return (
        (call_type << ARM_SMCCC_TYPE_SHIFT)
        | (conv << ARM_SMCCC_CALL_CONV_SHIFT)
        | (owner << ARM_SMCCC_OWNER_SHIFT)
        | number
    )


def decode_function_id(a0: int) -> FunctionId:
    """Decode the low 32 bits of register a0.  Bits 63:32 are ignored, as the
    SMC32 convention and Xen's dispatcher do; a value that is not a 64-bit
    register at all is refused."""
    if not isinstance(a0, int) or not 0 <= a0 <= _U64:
        raise FunctionIdOutOfRange(f"a0 = {a0!r} is not a 64-bit register value")
    value = a0 & _U32
    return FunctionId(
        fast=bool((value >> ARM_SMCCC_TYPE_SHIFT) & 1),
        smc64=bool((value >> ARM_SMCCC_CALL_CONV_SHIFT) & 1),
        owner=(value >> ARM_SMCCC_OWNER_SHIFT) & ARM_SMCCC_OWNER_MASK,
        number=value & ARM_SMCCC_FUNC_MASK,
        value=value,
    )


def function_id(a0: int) -> int:
    """The function ID register a0 names: its low 32 bits, W0.  DEN0028
    passes an SMC32 call's function ID and arguments in W0..W7 (and every
    OP-TEE ID is SMC32), so x0's upper half is not part of it; Xen's vsmc.c
    and optee_handle_call read ``(uint32_t)`` of x0 alike."""
    return decode_function_id(a0).value


def is_trusted_os_owner(owner: int) -> bool:
    """True for the Trusted Application and Trusted OS ranges (48..49, 50..63):
    the owners Xen's vsmc.c routes to the TEE mediator."""
    return ARM_SMCCC_OWNER_TRUSTED_APP <= owner <= ARM_SMCCC_OWNER_TRUSTED_OS_END
