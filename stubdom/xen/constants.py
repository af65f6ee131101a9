"""Constants of the machine model, with the upstream headers they come from."""

from __future__ import annotations

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "PAGE_MASK",
    "PAGE_OFFSET_MASK",
    "DOMID_FIRST_RESERVED",
    "DOMID_SELF",
    "DOMID_IO",
    "DOMID_XEN",
    "DOMID_COW",
    "DOMID_INVALID",
    "DOMID_IDLE",
    "DOMID_MASK",
    "GUEST_RAM0_BASE",
    "GUEST_RAM0_SIZE",
    "INVALID_MFN",
    "INVALID_GFN",
    "IPA_BITS",
    "DEFAULT_RAM_BASE",
    "OPTEE_SHMEM_START",
    "OPTEE_SHMEM_SIZE",
]

# xen/include/public/arch-arm.h: XEN_PAGE_SHIFT; Xen on Arm uses 4 KiB pages.
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
# As Xen's PAGE_MASK, ~(PAGE_SIZE - 1): `addr & PAGE_MASK` is the page base.
PAGE_MASK = ~(PAGE_SIZE - 1)
PAGE_OFFSET_MASK = PAGE_SIZE - 1

# xen/include/public/xen.h: domain ids at and above DOMID_FIRST_RESERVED are
# pseudo-domains, never ordinary domains.
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4  # "pages with unknown owner": our owner of a free frame
DOMID_IDLE = 0x7FFF
DOMID_MASK = 0x7FFF

# xen/include/public/arch-arm.h: the guest (domU) memory map's first RAM bank,
# "3GB of low RAM @ 1GB".  A domU's RAM starts at this IPA.
GUEST_RAM0_BASE = 0x4000_0000
GUEST_RAM0_SIZE = 0xC000_0000

# xen/include/xen/mm-frame.h: INVALID_MFN / INVALID_GFN are ~0UL.
INVALID_MFN = (1 << 64) - 1
INVALID_GFN = (1 << 64) - 1

# Stage-2 input size of the model: 48-bit IPAs (Xen's p2m_ipa_bits follows
# the CPU's PARange; 48 is what an AArch64 Cortex-A57/A72 host reports).
IPA_BITS = 48

# QEMU's Arm "virt" board puts DRAM at 1 GiB (hw/arm/virt.c, VIRT_MEM); a
# direct-mapped dom0 sees it at the same address.
DEFAULT_RAM_BASE = 0x4000_0000

# OP-TEE's static (reserved) non-secure shared memory on QEMU Armv8-A:
# core/arch/arm/plat-vexpress/conf.mk, PLATFORM_FLAVOR qemu_armv8a,
# CFG_SHMEM_START ?= 0x42000000, CFG_SHMEM_SIZE ?= 0x00200000.
OPTEE_SHMEM_START = 0x4200_0000
OPTEE_SHMEM_SIZE = 0x0020_0000
