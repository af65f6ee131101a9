"""Per-call tracing, owned by no side (the platform, the daemon and the
benchmark all record into it): sampled calls, each stage a span per process
and thread, written in the Trace Event JSON format that Perfetto's UI and
chrome://tracing open (docs/performance.md, "Tracing a call").

    TRACER.enable(every=100, process_name="platform")
    if TRACER.on: ...                 # the hot path's one check
    TRACER.write("platform.json")
    merge_documents([a, b]); stage_table(doc)

Standard library only: the daemon loads it.
"""

from .summary import HANDOFFS as HANDOFFS
from .summary import STAGES as STAGES
from .summary import CallTrace as CallTrace
from .summary import calls_in as calls_in
from .summary import load_trace as load_trace
from .summary import merge_documents as merge_documents
from .summary import stage_table as stage_table
from .tracer import DEFAULT_EVERY as DEFAULT_EVERY
from .tracer import DEFAULT_MAX_EVENTS as DEFAULT_MAX_EVENTS
from .tracer import TRACE_ID_BIT as TRACE_ID_BIT
from .tracer import TRACER as TRACER
from .tracer import TracedCall as TracedCall
from .tracer import Tracer as Tracer
from .tracer import clock_description as clock_description
from .tracer import now_ns as now_ns
from .tracer import trace_document as trace_document
from .tracer import write_document as write_document

__all__ = [
    "CallTrace",
    "DEFAULT_EVERY",
    "DEFAULT_MAX_EVENTS",
    "HANDOFFS",
    "STAGES",
    "TRACER",
    "TRACE_ID_BIT",
    "TracedCall",
    "Tracer",
    "calls_in",
    "clock_description",
    "load_trace",
    "merge_documents",
    "now_ns",
    "stage_table",
    "trace_document",
    "write_document",
]
