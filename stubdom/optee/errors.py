"""Exceptions raised by the OP-TEE ABI package.

Every class derives from :class:`AbiError` (itself a :class:`ValueError`), so a
caller that only wants "the bytes or numbers were bad" catches one type.  Each
message names the offending value; page-list errors also carry the entry index
at which the problem was found.
"""

from __future__ import annotations

__all__ = [
    "AbiError",
    "FieldOutOfRange",
    "FunctionIdOutOfRange",
    "TruncatedMessage",
    "TooManyParams",
    "BadParamAttr",
    "BadMetaParam",
    "BadUuid",
    "BadPageList",
    "EmptyPageList",
    "UnalignedAddress",
    "NullAddress",
    "PageListLoop",
    "PageListTooLong",
    "TruncatedPage",
    "PageListShapeMismatch",
    "BadTaImage",
]


class AbiError(ValueError):
    """Base of every error in :mod:`stubdom.optee`: input that does not fit the
    OP-TEE SMC ABI.  Catch this to turn any malformed input into a defined
    error code (EBADADDR, TEEC_ERROR_BAD_PARAMETERS, ...)."""


class FieldOutOfRange(AbiError):
    """Raised when a value does not fit the fixed-width field it is destined
    for (a u32 header field, a u64 parameter word, a 32-bit register half, a
    4-bit TEEC param type...).  Nothing is ever truncated silently."""

    def __init__(self, field: str, value: object, bits: int) -> None:
        self.field = field
        self.value = value
        self.bits = bits
        super().__init__(f"{field} = {value!r} does not fit in {bits} bits")


class FunctionIdOutOfRange(AbiError):
    """Raised by :func:`smccc_call_val` when the owner (0..63) or function
    number (0..0xFFFF) is out of range, or by :func:`decode_function_id` when
    the register is negative or wider than 64 bits."""


class TruncatedMessage(AbiError):
    """Raised when a buffer is too short for the ``optee_msg_arg`` header, for
    the number of parameters its header announces, or for one
    ``optee_msg_param``.  The parser never reads past the buffer it is given."""


class TooManyParams(AbiError):
    """Raised when ``num_params`` in an ``optee_msg_arg`` header exceeds the
    caller's limit (by default OPTEE_MSG_MAX_NUM_PARAMS = 127, i.e. the
    argument would not fit one 4 KiB page).  OP-TEE answers EBADADDR."""

    def __init__(self, num_params: int, max_params: int) -> None:
        self.num_params = num_params
        self.max_params = max_params
        super().__init__(f"num_params = {num_params} exceeds the maximum of {max_params}")


class BadParamAttr(AbiError):
    """Raised by the typed :class:`MsgParam` constructors when ``attr`` does not
    name a type of that family (e.g. ``MsgParam.tmem`` with a VALUE type)."""


class BadMetaParam(AbiError):
    """Raised by :meth:`OpenSessionMeta.from_params` when an OPEN_SESSION
    message lacks its two meta parameters, one of them has an attr other than
    exactly VALUE_INPUT|META (0x101), or the login in params[1].c does not fit
    32 bits.  OP-TEE answers TEEC_ERROR_BAD_PARAMETERS."""


class BadUuid(AbiError):
    """Raised when UUID octets are not exactly 16 bytes, or a UUID argument is
    not a :class:`uuid.UUID`."""


class BadPageList(AbiError):
    """Base of the non-contiguous page-list errors (OPTEE_MSG_ATTR_NONCONTIG).
    ``entry_index`` is the index of the buffer page being resolved when the
    problem was found (None when it concerns the list as a whole)."""

    def __init__(self, message: str, *, entry_index: int | None = None) -> None:
        self.entry_index = entry_index
        super().__init__(message)


class EmptyPageList(BadPageList):
    """Raised when size + offset is 0: the list describes no page at all
    (OP-TEE's page-count arithmetic fails on it)."""


class UnalignedAddress(BadPageList):
    """Raised when a page-list entry, a next-list-page pointer, a list page
    address or a page handed to the builder is not 4 KiB aligned."""

    def __init__(self, what: str, address: int, *, entry_index: int | None = None) -> None:
        self.address = address
        where = "" if entry_index is None else f" (entry {entry_index})"
        super().__init__(
            f"{what} {address:#x}{where} is not 4 KiB aligned", entry_index=entry_index
        )


class NullAddress(BadPageList):
    """Raised when a page-list entry, a next-list-page pointer that is needed,
    or the first list page is address 0."""

    def __init__(self, what: str, *, entry_index: int | None = None) -> None:
        where = "" if entry_index is None else f" (entry {entry_index})"
        super().__init__(f"{what} is address 0{where}", entry_index=entry_index)


class PageListLoop(BadPageList):
    """Raised when following next pointers reaches a list page that was already
    read (including a list page that points to itself)."""

    def __init__(self, address: int, *, entry_index: int) -> None:
        self.address = address
        super().__init__(
            f"page list loops: list page {address:#x} needed for entry {entry_index} "
            f"was already visited",
            entry_index=entry_index,
        )


class PageListTooLong(BadPageList):
    """Raised when a buffer needs more pages than the caller allows (checked
    before any list page is read)."""

    def __init__(self, needed: int, max_entries: int) -> None:
        self.needed = needed
        self.max_entries = max_entries
        super().__init__(f"page list needs {needed} entries, more than the maximum of {max_entries}")


class TruncatedPage(BadPageList):
    """Raised when ``read_page`` returns something other than exactly 4096 bytes
    for a list page."""

    def __init__(self, address: int, length: int, *, entry_index: int) -> None:
        self.address = address
        self.length = length
        super().__init__(
            f"list page {address:#x} read as {length} bytes, expected 4096 (entry {entry_index})",
            entry_index=entry_index,
        )


class PageListShapeMismatch(BadPageList):
    """Raised by :func:`build_page_list` when the number of list-page addresses
    supplied is not the number of list pages the entries need."""


class BadTaImage(AbiError):
    """Raised by :func:`stubdom.optee.taimage.parse_ta_image` for bytes that
    are not a valid TA image: too short, a wrong magic or version, a body size
    the image does not have, a digest the body does not match, or another
    TA's UUID.  ``field`` names what was wrong and ``value`` what was found;
    the secure world answers it with TEE_ERROR_SECURITY, as OP-TEE answers a
    TA whose signed header does not verify (``core/kernel/ree_fs_ta.c``)."""

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"TA image {field} = {value!r}: {why}")
