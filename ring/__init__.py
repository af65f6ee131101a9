"""The teeif shared ring and socket event channels (docs/protocol.md).

The ring's hot path is C (``ring._ring``, built from cffi_build/); this
package is its Python face: typed entries, the two ring ends, the event
channel, the transport floor, the answers given in C and the SMC gate's
hypercall path.
"""

from ring._back import BackRing as BackRing
from ring._entries import Request as Request
from ring._entries import Response as Response
from ring._entries import request_buffer as request_buffer
from ring._entries import response_buffer as response_buffer
from ring._evtchn import ChannelStatistics as ChannelStatistics
from ring._evtchn import EventChannel as EventChannel
from ring._evtchn import EventChannelListener as EventChannelListener
from ring._evtchn import connect as connect
from ring._fast import FORWARD_TIMEOUT as FORWARD_TIMEOUT
from ring._fast import MAX_FAST_RULES as MAX_FAST_RULES
from ring._fast import FastRing as FastRing
from ring._fast import FastRule as FastRule
from ring._fast import FastStatistics as FastStatistics
from ring._fast import FastTable as FastTable
from ring._fast import FastTrace as FastTrace
from ring._fast import ForwardTimeout as ForwardTimeout
from ring._floor import EVTCHN_FILE as EVTCHN_FILE
from ring._floor import RING_FILE as RING_FILE
from ring._floor import run_floor as run_floor
from ring._front import CallStatus as CallStatus
from ring._front import FrontRing as FrontRing
from ring._gate import GATE_ADMIT as GATE_ADMIT
from ring._gate import GATE_REFUSE as GATE_REFUSE
from ring._gate import GATE_UNASSIGNED as GATE_UNASSIGNED
from ring._gate import GateCall as GateCall
from ring._gate import GateCounters as GateCounters
from ring._gate import GateRegistersInvalid as GateRegistersInvalid
from ring._gate import GateTable as GateTable
from ring._probe import MachineProbes as MachineProbes
from ring._probe import probe_machine as probe_machine
from ring._shared import ENTRY_SIZE as ENTRY_SIZE
from ring._shared import HEADER_SIZE as HEADER_SIZE
from ring._shared import MAX_RING_PAGES as MAX_RING_PAGES
from ring._shared import PAGE_SIZE as PAGE_SIZE
from ring._shared import RingStatistics as RingStatistics
from ring._shared import SharedIndices as SharedIndices
from ring._shared import create_ring_file as create_ring_file
from ring._shared import ring_entries as ring_entries
from ring._spinset import BackSpinSet as BackSpinSet
from ring.errors import FloorMismatch as FloorMismatch
from ring.errors import PeerDied as PeerDied
from ring.errors import RingClosed as RingClosed
from ring.errors import RingCorrupted as RingCorrupted
from ring.errors import RingError as RingError
from ring.errors import RingFull as RingFull
from ring.errors import RingSizeError as RingSizeError
from ring.errors import RingTruncated as RingTruncated
from ring.errors import TooManyResponses as TooManyResponses

__all__ = [
    "BackRing",
    "BackSpinSet",
    "CallStatus",
    "ChannelStatistics",
    "ENTRY_SIZE",
    "EVTCHN_FILE",
    "EventChannel",
    "EventChannelListener",
    "FORWARD_TIMEOUT",
    "FastRing",
    "FastRule",
    "FastStatistics",
    "FastTable",
    "FastTrace",
    "FloorMismatch",
    "ForwardTimeout",
    "FrontRing",
    "GATE_ADMIT",
    "GATE_REFUSE",
    "GATE_UNASSIGNED",
    "GateCall",
    "GateCounters",
    "GateRegistersInvalid",
    "GateTable",
    "HEADER_SIZE",
    "MAX_FAST_RULES",
    "MAX_RING_PAGES",
    "MachineProbes",
    "PAGE_SIZE",
    "PeerDied",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "RING_FILE",
    "Request",
    "Response",
    "RingClosed",
    "RingCorrupted",
    "RingError",
    "RingFull",
    "RingSizeError",
    "RingStatistics",
    "RingTruncated",
    "SharedIndices",
    "TooManyResponses",
    "connect",
    "create_ring_file",
    "probe_machine",
    "request_buffer",
    "response_buffer",
    "ring_entries",
    "run_floor",
]

# Kept from the skeleton: the entry sizes other packages already use.
REQUEST_SIZE = ENTRY_SIZE
RESPONSE_SIZE = ENTRY_SIZE
