/*
 * teeif.h: the shared ring between a domain's OP-TEE frontend (the trap path
 * in the platform) and its backend (stubdom-teed), and the socket event
 * channel beside it. The shared page has exactly the layout of Xen's public
 * io/ring.h with
 *
 *     DEFINE_RING_TYPES(teeif, struct teeif_request, struct teeif_response);
 *
 * so a C program written against Xen's own header can be either end.
 * docs/protocol.md is the prose version of this file: file names, barriers,
 * notification hold-off, hostile-peer rules and an example peer.
 *
 * This header is also the cdef of the cffi module ring._ring: plain
 * declarations and integer #defines only, no macros with arguments and no
 * preprocessor conditionals. The includer provides <stdint.h> and <stddef.h>.
 * It has no include guard on purpose (cffi cannot parse one): include it once.
 *
 * Roles. The FRONT produces requests and consumes responses; the BACK
 * consumes requests and produces responses. Each end is single-threaded: one
 * producer and one consumer per direction, as in io/ring.h.
 *
 * Return values. Every function returning int returns >= 0 on success (a
 * count where one is meaningful), a negative errno for an operating-system
 * failure, or one of the TEEIF_E* codes below (all <= -10000, far from any
 * errno). ring/_lib.py turns them into exceptions in one place.
 */

/* Bumped whenever this interface changes; ring/_lib.py refuses a stale build. */
#define TEEIF_ABI_VERSION 8

#define TEEIF_PAGE_SIZE 4096        /* ring protocols use 4 KiB pages: io/ring.h XEN_PAGE_SHIFT */
#define TEEIF_RING_HDR_SIZE 64      /* io/ring.h: four indices, pvt[4], __pad[44] */
#define TEEIF_ENTRY_SIZE 80         /* sizeof(union teeif_sring_entry) */
#define TEEIF_MAX_RING_PAGES 1024   /* 4 MiB; a sanity bound on a file we are handed */

enum teeif_error {
    TEEIF_EFULL = -10001,       /* front: not enough free slots for the whole batch; nothing pushed */
    TEEIF_ECORRUPT = -10002,    /* the peer's producer index is impossible (see bad_* fields) */
    TEEIF_ENOREQ = -10003,      /* back: more responses than requests taken off the ring */
    TEEIF_EPEER = -10004,       /* event channel: end-of-file, the peer closed or died */
    TEEIF_ESIZE = -10005,       /* ring file size is not a whole number of pages in range */
    TEEIF_EMISMATCH = -10006,   /* floor: a response did not echo its request */
    TEEIF_ETRUNC = -10007,      /* the ring file shrank under its mapping (SIGBUS caught): the
                                 * peer truncated it; see fault_off. Sticky: every later call
                                 * on that end fails so, without touching the mapping */
    TEEIF_ETIMEOUT = -10008     /* fast path: the forwarding ring gave no answer in time */
};

/* fault_off when the fault carried no address (a handler in front of ours passed it on). */
#define TEEIF_FAULT_UNKNOWN 0xFFFFFFFF

struct teeif_request {          /* 80 bytes */
    uint64_t id;                /* chosen by the frontend, echoed back */
    uint32_t vcpu;              /* the vCPU that trapped */
    uint32_t flags;             /* 0 */
    uint64_t a[8];              /* x0..x7 at the trap */
};

struct teeif_response {         /* 80 bytes */
    uint64_t id;                /* the request's id */
    int32_t  status;            /* 0, or a negative errno from the backend */
    uint32_t flags;             /* 0 */
    uint64_t a[8];              /* x0..x7 the vCPU resumes with */
};

/* One slot: a request until the back answers it, then that request's response. */
union teeif_sring_entry {
    struct teeif_request req;
    struct teeif_response rsp;
};

/*
 * The shared page(s): io/ring.h's struct teeif_sring. Indices are free-running
 * uint32 (RING_IDX); slot = index & (nr_ents - 1). req_event/rsp_event are the
 * index whose production the sleeping consumer wants to be woken for.
 */
struct teeif_sring {
    uint32_t req_prod;          /* written by the front only */
    uint32_t req_event;         /* written by the back only */
    uint32_t rsp_prod;          /* written by the back only */
    uint32_t rsp_event;         /* written by the front only */
    uint8_t  pvt[4];            /* io/ring.h's per-protocol union; teeif keeps it 0 */
    uint8_t  pad[44];
    union teeif_sring_entry ring[]; /* nr_ents slots from offset 64 */
};

/* Counters kept by each end; read by ring.RingStatistics. */
struct teeif_stats {
    uint64_t pushes;            /* entries produced */
    uint64_t pops;              /* entries consumed */
    uint64_t batches;           /* push/pop calls that moved at least one entry */
    uint64_t notify_sent;       /* pushes after which the peer had to be notified */
    uint64_t notify_suppressed; /* pushes the peer's event index said need no notify */
    uint64_t final_checks;      /* final checks that re-armed the event index */
    uint64_t sleeps;            /* final checks that found nothing: caller may sleep */
    uint64_t poll_hits;         /* polls that found work while spinning */
};

/* The front's private state: io/ring.h's struct teeif_front_ring plus ours. */
struct teeif_front_ring {
    uint32_t req_prod_pvt;      /* next request slot to fill */
    uint32_t rsp_cons;          /* next response to consume */
    uint32_t nr_ents;           /* from ring_pages, never from the shared page */
    uint32_t ring_pages;
    struct teeif_sring *sring;
    struct teeif_stats stats;
    uint32_t bad_prod;          /* on TEEIF_ECORRUPT: the rsp_prod that was refused */
    uint32_t truncated;         /* a SIGBUS showed the mapping shrank: TEEIF_ETRUNC from now on */
    uint32_t fault_off;         /* on TEEIF_ETRUNC: offset in the mapping of the access that faulted */
};

/* The back's private state: io/ring.h's struct teeif_back_ring plus ours. */
struct teeif_back_ring {
    uint32_t rsp_prod_pvt;      /* next response slot to fill */
    uint32_t req_cons;          /* next request to consume */
    uint32_t nr_ents;
    uint32_t ring_pages;
    struct teeif_sring *sring;
    struct teeif_stats stats;
    uint32_t bad_prod;          /* on TEEIF_ECORRUPT: the req_prod that was refused */
    uint32_t truncated;         /* a SIGBUS showed the mapping shrank: TEEIF_ETRUNC from now on */
    uint32_t fault_off;         /* on TEEIF_ETRUNC: offset in the mapping of the access that faulted */
};

/* Entries in a ring of ring_pages pages: the largest power of two that fits. */
uint32_t teeif_ring_entries(uint32_t ring_pages);

/*
 * Map a ring file. create != 0: make a new file (it must not exist) of
 * ring_pages pages and initialise the shared header like SHARED_RING_INIT,
 * but with every index at start (events at start + 1). create == 0: map an
 * existing file; ring_pages 0 means "take it from the file size", otherwise
 * it must match. *out_pages receives the page count.
 */
int teeif_ring_map(const char *path, uint32_t ring_pages, int create, uint32_t start,
                   struct teeif_sring **out_sring, uint32_t *out_pages);
int teeif_ring_unmap(struct teeif_sring *sring, uint32_t ring_pages);
/* Copy the four shared indices (req_prod, req_event, rsp_prod, rsp_event) out,
 * for logs and tests: Python never reads the mapping itself. */
int teeif_ring_indices(struct teeif_sring *sring, uint32_t ring_pages, uint32_t *out);

/*
 * Every function below that touches the shared page does so under a SIGBUS
 * guard (teeif_guard.c): if the peer truncated the ring file, the call
 * returns TEEIF_ETRUNC instead of the process dying, and so does every later
 * call on that end. teeif_ring_map installs the guard's handler (once per
 * process), chained to whatever SIGBUS handler was there before.
 */

/*
 * Attach an end to a mapped ring, taking the private indices from the shared
 * page (a fresh ring, or re-attaching after this end restarted): the front
 * resumes at req_prod/rsp_prod, the back at rsp_prod (requests it had taken
 * but not answered before it died are taken again). TEEIF_ECORRUPT if the
 * page's indices are impossible.
 */
int teeif_front_attach(struct teeif_front_ring *f, struct teeif_sring *s, uint32_t ring_pages);
int teeif_back_attach(struct teeif_back_ring *b, struct teeif_sring *s, uint32_t ring_pages);

/* Front. */
uint32_t teeif_front_free_requests(const struct teeif_front_ring *f);
/* Copy n requests in and push them all (TEEIF_EFULL, nothing pushed, if they
 * do not fit); *notify = 1 if the back must be notified. */
int teeif_front_push_requests(struct teeif_front_ring *f, const struct teeif_request *reqs,
                              uint32_t n, int *notify);
/* Copy up to max responses out; returns how many. */
int teeif_front_pop_responses(struct teeif_front_ring *f, struct teeif_response *out, uint32_t max);
/* Responses waiting, without re-arming rsp_event. */
int teeif_front_unconsumed(struct teeif_front_ring *f);
/* RING_FINAL_CHECK_FOR_RESPONSES: > 0 work waiting, 0 sleep (rsp_event armed). */
int teeif_front_final_check(struct teeif_front_ring *f);
/* Spin for up to spin_ns waiting for responses, then the final check. */
int teeif_front_poll(struct teeif_front_ring *f, uint64_t spin_ns);
/* Spin for up to spin_ns waiting for responses WITHOUT the final check: the
 * event index stays where it was, so the back keeps not notifying. Returns the
 * responses waiting, 0 when the window ended with none. For a consumer that
 * spins in slices and re-arms only once, at the end of its whole window. */
int teeif_front_spin(struct teeif_front_ring *f, uint64_t spin_ns);
/*
 * One request's round trip in one call, for a frontend whose caller is the
 * only one waiting on this ring (the platform's trap path, when one vCPU of
 * the domain is in flight): push req as teeif_front_push_requests does; if
 * the push says the back must be notified, notify evtchn_fd
 * (teeif_evtchn_notify); then spin for up to spin_ns (no final check) until
 * a response is there and take it only if its id is req->id. Anything else
 * stays on the ring, unconsumed, for the caller's own pop.
 *
 * Returns < 0 only when nothing was pushed: the push's TEEIF_EFULL or
 * TEEIF_ETRUNC. Otherwise req is on the ring, and:
 *   TEEIF_CALL_ANSWERED       *out is req's answer, consumed;
 *   TEEIF_CALL_WAITING        the window ended with no response;
 *   TEEIF_CALL_OTHER          the oldest response is another id's (a late
 *                             answer the caller no longer waits for, or
 *                             another caller's): left on the ring;
 *   TEEIF_CALL_FAILED         the ring failed after the push (rsp_prod
 *                             refused: bad_prod; or truncated: every later
 *                             call on the end says so); nothing was read;
 *   TEEIF_CALL_NOTIFY_FAILED  the notification could not be sent (*notify
 *                             holds teeif_evtchn_notify's error); nothing spun.
 * *notify: what became of the push's notify decision (TEEIF_NOTIFY_*, or
 * that error). *out is scratch unless the answer is in it.
 */
enum teeif_call_result {
    TEEIF_CALL_WAITING = 0,
    TEEIF_CALL_ANSWERED = 1,
    TEEIF_CALL_OTHER = 2,
    TEEIF_CALL_FAILED = 3,
    TEEIF_CALL_NOTIFY_FAILED = 4
};
enum teeif_call_notify {
    TEEIF_NOTIFY_NONE = 0,      /* the back's req_event asked for no notification */
    TEEIF_NOTIFY_SENT = 1,      /* one sent on evtchn_fd */
    TEEIF_NOTIFY_PENDING = 2    /* the channel was full: one is pending at the back already */
};
/* times (may be NULL, else 2 entries, teeif_now_ns): [0] the push done (and
 * its notification sent), [1] the answer seen at the head; 0 where not reached.
 * For the tracer, so that a sampled call takes this same path. */
int teeif_front_call(struct teeif_front_ring *f, const struct teeif_request *req, uint64_t spin_ns,
                     int evtchn_fd, struct teeif_response *out, int *notify, uint64_t *times);
/* teeif_front_call's wait again, with nothing pushed: spin for up to spin_ns
 * and take the oldest response only if its id is id (the same TEEIF_CALL_*
 * results but NOTIFY_FAILED; TEEIF_ETRUNC for a truncated end). times: [1]
 * set as by teeif_front_call when the answer is seen, [0] left alone. For a
 * caller that waits in slices, returning to its interpreter between them. */
int teeif_front_await(struct teeif_front_ring *f, uint64_t id, uint64_t spin_ns, struct teeif_response *out,
                      uint64_t *times);

/* Back. */
/* Copy up to max requests out of the shared page; returns how many. */
int teeif_back_pop_requests(struct teeif_back_ring *b, struct teeif_request *out, uint32_t max);
/* Copy the oldest unconsumed request out without consuming it; returns the
 * requests waiting (0: none, nothing copied). The caller decides on its copy. */
int teeif_back_peek_request(struct teeif_back_ring *b, struct teeif_request *out);
/* Consume n requests already looked at with peek (at most the requests waiting). */
int teeif_back_skip_requests(struct teeif_back_ring *b, uint32_t n);
/* Copy n responses in and push them with one notify decision. */
int teeif_back_push_responses(struct teeif_back_ring *b, const struct teeif_response *rsps,
                              uint32_t n, int *notify);
int teeif_back_unconsumed(struct teeif_back_ring *b);
/*
 * A new frontend connected: 1 if it must be notified now. The notify decision
 * of RING_PUSH_RESPONSES_AND_CHECK_NOTIFY taken again for every response on
 * the ring, as if all had just been pushed: 1 iff rsp_event lies in
 * (rsp_prod_pvt - nr_ents, rsp_prod_pvt], i.e. a frontend that went to sleep
 * asked to be woken by a response already published. The notification for it
 * may have gone to the channel of the frontend before, which is dead.
 */
int teeif_back_recheck_notify(struct teeif_back_ring *b);
/* RING_FINAL_CHECK_FOR_REQUESTS: > 0 work waiting, 0 sleep (req_event armed). */
int teeif_back_final_check(struct teeif_back_ring *b);
int teeif_back_poll(struct teeif_back_ring *b, uint64_t spin_ns);
/* teeif_front_spin's twin for requests. */
int teeif_back_spin(struct teeif_back_ring *b, uint64_t spin_ns);
/*
 * One spin over many back rings (a backend serving many domains from one
 * thread): rings[0..n) may hold NULL for unused slots. Spins for up to spin_ns
 * until at least one ring has requests or an impossible req_prod, writes the
 * slot numbers of those rings to ready[] (room for n) and returns how many;
 * 0 when the window ended with none. No final check on any ring.
 */
int teeif_back_spin_any(struct teeif_back_ring **rings, uint32_t n, uint64_t spin_ns,
                        uint32_t *ready);

/*
 * Event channel over a connected AF_UNIX SOCK_SEQPACKET socket. A notification
 * is one message of one byte (content ignored; zero-length messages are not
 * allowed, they would read as end-of-file).
 */
/* Send one notification; a full socket buffer means one is already pending: 0. */
int teeif_evtchn_notify(int fd);
/* Read every pending notification without blocking; returns how many.
 * TEEIF_EPEER on end-of-file, once the notifications before it are drained. */
int teeif_evtchn_drain(int fd);
/* Wait until readable: 1 readable, 0 timed out; timeout_ns < 0 waits forever. */
int teeif_evtchn_wait(int fd, int64_t timeout_ns);

/*
 * Transport floor: ping-pong through this ring and channel with no Python in
 * the loop. The front runs `rounds` rounds of `batch` requests, checks every
 * response and stores each round trip in samples_ns[rounds]. The back echoes
 * (id, a[i] -> ~a[i]) until it has answered `entries` requests. spin_ns is the
 * polling window before sleeping on the channel (0: sleep at once).
 */
int teeif_floor_front_run(struct teeif_front_ring *f, int fd, uint32_t rounds, uint32_t batch,
                          uint64_t spin_ns, uint64_t *samples_ns);
int teeif_floor_back_run(struct teeif_back_ring *b, int fd, uint64_t entries, uint64_t spin_ns);

/*
 * Machine probes (teeif_probe.c): the mean cost of a system call and of a
 * sched_yield() with the CPU to itself, over n of each; and `rounds` turns
 * between this thread and a second one it starts (which inherits this
 * thread's CPU affinity), each waiting with the rings' spin step:
 * samples_ns[rounds] holds each turn there and back. 0, or a negative errno.
 */
uint64_t teeif_probe_syscall_ns(uint32_t n);
uint64_t teeif_probe_yield_ns(uint32_t n);
int teeif_probe_turn_run(uint32_t rounds, uint64_t *samples_ns);

/*
 * Answering from C (teeif_fast.c). A backend serving many rings from one
 * thread may give this table the requests it answers without judgment: a
 * rule per function (the low 32 bits of a[0]) either answers fixed
 * registers or forwards one request (a[0] = the function, a[1..7] = 0)
 * through another ring it is the front of (the stub domain: the SMC gate)
 * and passes the first `keep` registers of that answer on, each masked to
 * 32 bits, the rest 0. A ring's `allow` mask says which rules apply to it.
 * Only the request at the head of a ring is ever answered here, so a ring's
 * requests are answered in order: anything else stops the table at that
 * ring and is the owner's to pop, and so is a ring whose owner has taken
 * requests it has not answered yet. Requests are read once (peek, then the
 * copy decides) and a forwarded answer with a status other than 0, or any
 * failure of the forwarding ring, answers nothing: the request stays at the
 * head for the owner, the ring is paused (`paused`) until the owner clears
 * it, and fwd_error says why. The table never blocks longer than one
 * forwarded request (fwd_timeout_ns).
 */
#define TEEIF_FAST_MAX_RULES 8
#define TEEIF_FAST_LATENCIES 64     /* per ring: the last answers' latencies kept */
#define TEEIF_FAST_TRACES 32        /* per table: the last sampled answers' stage times kept */

struct teeif_fast_rule {
    uint32_t function;          /* a[0] & 0xffffffff */
    uint32_t forward;           /* 0: answer[] as it is; 1: forward through the table's ring */
    uint32_t keep;              /* forward: registers of the forwarded answer passed on (0..8) */
    uint32_t pad;
    uint64_t answer[8];         /* forward == 0: the registers answered */
};

struct teeif_fast_ring {        /* one per ring the table may answer; its owner's between calls */
    uint32_t allow;             /* bit i: rules[i] may answer this ring's requests */
    uint32_t target;            /* teeif_request.vcpu of a forwarded request (the stub domain: the domid) */
    int32_t evtchn_fd;          /* the frontend's channel, notified when a push says so; < 0: none,
                                 * and nothing is answered (an answer could not be announced) */
    uint32_t paused;            /* set here (a forwarding failure, a dead peer): nothing answered until cleared */
    uint32_t peer_gone;         /* notifying the frontend met end-of-file */
    uint32_t pad;
    uint64_t answered[TEEIF_FAST_MAX_RULES];   /* per rule */
    uint64_t latency_next;      /* latencies written (free running): latency_ns[i % TEEIF_FAST_LATENCIES] */
    uint32_t latency_ns[TEEIF_FAST_LATENCIES]; /* peek to push, ns, saturating */
};

/* One sampled answer (its request id has a trace bit): when each stage began
 * and ended, CLOCK_MONOTONIC ns; the fwd_* are 0 for a fixed answer. */
struct teeif_fast_trace {
    uint64_t id;                /* the request's id */
    uint64_t fwd_id;            /* the forwarded request's id (it carries the trace bits too) */
    uint32_t target;
    uint32_t function;
    uint64_t peek_start, peek_end;      /* the request copied out */
    uint64_t fwd_start, fwd_pushed;     /* the forwarded request pushed (and notified) */
    uint64_t fwd_popped;                /* its answer popped */
    uint64_t push_start, push_end;      /* the answer pushed (and notified) */
};

struct teeif_fast_table {
    uint32_t enabled;           /* 0: nothing is answered here */
    uint32_t nrules;
    uint64_t skip_id_bits;      /* a request whose id has any of these bits is the owner's */
    uint64_t trace_bits;        /* a request whose id has any of these bits is answered and recorded in
                                 * traces[], and its forwarded request's id carries the same bits */
    uint64_t traces_next;       /* records written (free running): traces[i % TEEIF_FAST_TRACES] */
    struct teeif_fast_trace traces[TEEIF_FAST_TRACES];
    struct teeif_fast_rule rules[TEEIF_FAST_MAX_RULES];
    struct teeif_front_ring *fwd;   /* the forwarding ring (the owner keeps it attached) */
    int32_t fwd_fd;             /* its event channel */
    uint32_t fwd_flags;         /* teeif_request.flags of a forwarded request (the gate's op) */
    uint64_t fwd_next_id;       /* the next forwarded request's id; the owner syncs its own counter */
    uint64_t fwd_id_mask;       /* ids wrap within this mask */
    uint64_t fwd_spin_ns;       /* spin for the answer this long before sleeping on fwd_fd */
    int64_t fwd_timeout_ns;     /* no answer by then: TEEIF_ETIMEOUT */
    uint64_t fwd_calls;         /* forwarded requests pushed */
    uint64_t fwd_wakeups;       /* sleeps on fwd_fd that ended with a notification */
    uint64_t fwd_dropped;       /* forwarded answers whose id was not the one waited for */
    uint64_t fwd_failures;      /* forwarded requests that answered nothing (fwd_error) */
    int32_t fwd_error;          /* the last failure: the answer's status (< 0) or a TEEIF_E* code */
    uint32_t pad;
};

/*
 * One request of the owner's own through the table's forwarding ring (the
 * stub domain: every gate hypercall it makes, in C): a[8] as given, flags
 * and target (the request's vcpu field) as given, the id from fwd_next_id;
 * out gets the answer, its status whatever it is. 0, or < 0 when the ring or
 * its channel failed (TEEIF_ETIMEOUT: no answer within fwd_timeout_ns). The
 * table's enabled flag is neither read nor changed.
 */
int teeif_fast_forward(struct teeif_fast_table *t, uint32_t target, uint32_t flags, const uint64_t *a,
                       struct teeif_response *out);
/* Answer the requests at the head of ring b that the table may answer
 * (r: that ring's state); returns how many, or a negative TEEIF_E* of ring b
 * itself (corrupted, truncated), which the owner's pop reports. */
int teeif_fast_serve(struct teeif_fast_table *t, struct teeif_back_ring *b, struct teeif_fast_ring *r);
/*
 * teeif_fast_serve, then pop what it left into out[0..max) (returns how many
 * were popped; *answered gets how many C answered). Nothing is popped when C
 * emptied the ring: a request landing after its last look is left for its
 * next one, never taken by the owner past it. t or r NULL: the pop alone.
 */
int teeif_fast_serve_pop(struct teeif_fast_table *t, struct teeif_back_ring *b, struct teeif_fast_ring *r,
                         struct teeif_request *out, uint32_t max, uint32_t *answered);
/*
 * teeif_back_spin_any, answering what the table may on the way: spins for up
 * to spin_ns (counted from the call) until some ring has a request the table
 * left (its slot goes to ready[]) and returns how many such rings; rings the
 * table answered requests of go to served[] (*nserved of them, each once),
 * and an answer restarts nothing: the call still ends at spin_ns. fast[i] may
 * be NULL (ring i is the owner's alone); t NULL or disabled answers nothing.
 */
int teeif_fast_spin_any(struct teeif_fast_table *t, struct teeif_back_ring **rings,
                        struct teeif_fast_ring **fast, uint32_t n, uint64_t spin_ns,
                        uint32_t *ready, uint32_t *served, uint32_t *nserved);

/* ==== The SMC gate's hypercall path (teeif_gate.c) ============================
 *
 * The platform's end of the SMC gate (stubdom/platform/gate.py, docs/smc-gate.md)
 * serves the stub domain's hypercalls from one back ring. Per hypercall its
 * thread makes one call into C that spins (and sleeps) for the next request,
 * pops it, checks it against the gate's assignment table and, if admitted,
 * marks it in the TEE and stamps a7; then the TEE model runs (Python); then one
 * call pushes the answer, clears the mark and notifies. Refused requests go
 * back to the owner with their verdict: it tells -ENOENT from -EPERM, counts,
 * logs and answers them.
 *
 * The gate's ABI, mirrored here so that the checks are C's; each value is the
 * Python constant named beside it (tests/test_gate_c.py compares them).
 */
#define TEEIF_GATE_OP_SMC 1                 /* stubdom.public.gate.GATE_OP_SMC */
#define TEEIF_GATE_OP_HYP 2                 /* stubdom.public.gate.GATE_OP_HYP */
#define TEEIF_GATE_EPERM -1                 /* stubdom.public.gate.GATE_EPERM (-EPERM) */
#define TEEIF_GATE_EINVAL -22               /* stubdom.public.gate.GATE_EINVAL (-EINVAL) */
#define TEEIF_GATE_HYP_CLIENT_ID 0          /* stubdom.public.gate.HYP_CLIENT_ID: a7 of GATE_OP_HYP */
#define TEEIF_GATE_DOMID_FIRST_RESERVED 0x7FF0  /* stubdom.xen.constants (xen/include/public/xen.h) */
#define TEEIF_GATE_OWNER_SHIFT 24           /* stubdom.optee.smccc.ARM_SMCCC_OWNER_SHIFT */
#define TEEIF_GATE_OWNER_MASK 0x3F          /* stubdom.optee.smccc.ARM_SMCCC_OWNER_MASK */
#define TEEIF_GATE_OWNER_FIRST 48           /* stubdom.optee.smccc.ARM_SMCCC_OWNER_TRUSTED_APP */
#define TEEIF_GATE_OWNER_LAST 63            /* stubdom.optee.smccc.ARM_SMCCC_OWNER_TRUSTED_OS_END */
/* Room for the hypervisor-class allow-lists (stubdom.public.gate.HYP_PROBE_CALLS,
 * HYP_DOMAIN_CALLS), which the owner passes in: function IDs are OP-TEE's. */
#define TEEIF_GATE_MAX_CALLS 8

enum teeif_gate_verdict {
    TEEIF_GATE_IDLE = 0,        /* next: nothing popped (no channel and an empty ring, or the wake fd fired) */
    TEEIF_GATE_ADMIT = 1,       /* checked, marked in the TEE, a7 stamped: enter the TEE, then answer */
    TEEIF_GATE_REFUSE = 2,      /* refused with *status (TEEIF_GATE_EPERM / TEEIF_GATE_EINVAL) */
    TEEIF_GATE_UNASSIGNED = 3,  /* the domid is not assigned: the owner decides -EPERM or -ENOENT */
    TEEIF_GATE_WATCHED = 4      /* answer_next: answered, nothing popped: an owner waits for the mark */
};
/* teeif_gate_answer's result: bit 0 it notified, this bit an owner watches the mark. */
#define TEEIF_GATE_WATCHED_BIT 2

/* The hypervisor-class calls the gate lets through (a[0], all 64 bits). */
struct teeif_gate_policy {
    uint32_t nprobes;           /* always allowed: the mediator's probe */
    uint32_t ndomain_calls;     /* allowed for an assigned domid named again in a[1] as domid + 1 */
    uint64_t probes[TEEIF_GATE_MAX_CALLS];
    uint64_t domain_calls[TEEIF_GATE_MAX_CALLS];
};

struct teeif_gate_counters {
    uint64_t batches;           /* pops by teeif_gate_next that found a request */
    uint64_t wakeups;           /* its sleeps on the channel that ended with a notification */
};

/* Opaque: it holds a mutex (the check and the in-TEE mark against unassign). */
struct teeif_gate;

/* A gate with nothing assigned; NULL when out of memory or the policy has too many calls. */
struct teeif_gate *teeif_gate_new(const struct teeif_gate_policy *policy);
void teeif_gate_free(struct teeif_gate *g);
/* Assign (assigned != 0) or take back a domid below TEEIF_GATE_DOMID_FIRST_RESERVED
 * (-22 otherwise). Returns whether an admitted hypercall for domid is in the TEE
 * now: after taking it back, none can be admitted any more, so the owner waits
 * only for that one. */
int teeif_gate_assign(struct teeif_gate *g, uint32_t domid, uint32_t assigned);
/* Whether an admitted hypercall for domid is in the TEE. */
int teeif_gate_in_tee(struct teeif_gate *g, uint32_t domid);
/* Check req (a request already popped): a teeif_gate_verdict; on ADMIT req->a[7]
 * is stamped and the hypercall is marked in the TEE, in one step with the check. */
int teeif_gate_judge(struct teeif_gate *g, struct teeif_request *req, int32_t *status);
/* The TEE returned: clear the in-TEE mark. Returns whether an owner watches it. */
int teeif_gate_release(struct teeif_gate *g);
/* An owner starts (delta 1) or stops (-1) waiting for the in-TEE mark to clear
 * (unassign): while any waits, every clearing is reported (release, answer), in
 * one step with the clearing, so that the owner can wake it. Returns the number
 * now waiting, or -22 if that would leave [0, UINT32_MAX]. */
int teeif_gate_watch(struct teeif_gate *g, int delta);
/*
 * Wait for the next request on b and judge it (teeif_gate_judge): spin for up to
 * spin_ns, then the final check, then sleep on the channel fd until notified or
 * until wake_fd is readable (IDLE). fd < 0: no spin and no sleep, IDLE when b is
 * empty. A verdict, or < 0: b's TEEIF_ECORRUPT / TEEIF_ETRUNC, TEEIF_EPEER on
 * the channel's end-of-file, a negative errno. times (may be NULL, else 2
 * entries, teeif_now_ns): [0] the request seen, [1] popped and judged (the
 * tracer's "gate pop").
 */
int teeif_gate_next(struct teeif_gate *g, struct teeif_back_ring *b, uint64_t spin_ns, int fd, int wake_fd,
                    struct teeif_request *out, int32_t *status, uint64_t *times);
/* Clear the in-TEE mark, push the answer to request id (a[8]; all zero when
 * status != 0, whatever a holds) and notify fd (if >= 0) when the push says so.
 * Returns bit 0: it notified, TEEIF_GATE_WATCHED_BIT: an owner watches the mark;
 * or < 0 as the push and the notify fail. */
int teeif_gate_answer(struct teeif_gate *g, struct teeif_back_ring *b, int fd, uint64_t id, int32_t status,
                      const uint64_t *a);
/* teeif_gate_answer, then, unless it failed (its < 0) or an owner watches the
 * mark (TEEIF_GATE_WATCHED: nothing popped), teeif_gate_next: one call into C
 * between two hypercalls, so that the serving thread goes from its answer
 * straight to the wait that lets the waiting vCPU's thread have the CPU. */
int teeif_gate_answer_next(struct teeif_gate *g, struct teeif_back_ring *b, int fd, uint64_t id, int32_t status,
                           const uint64_t *a, uint64_t spin_ns, int wake_fd, struct teeif_request *out,
                           int32_t *out_status, uint64_t *times);
void teeif_gate_counters(struct teeif_gate *g, struct teeif_gate_counters *out);
