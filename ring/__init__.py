"""The teeif shared ring and event channels (see docs/protocol.md)."""

from ring._ring import ffi as _ffi

REQUEST_SIZE = _ffi.sizeof("struct teeif_request")
RESPONSE_SIZE = _ffi.sizeof("struct teeif_response")

__all__ = ["REQUEST_SIZE", "RESPONSE_SIZE"]
