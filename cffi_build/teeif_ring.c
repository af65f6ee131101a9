/*
 * teeif_ring.c: the two ends of the teeif shared ring (see teeif.h and
 * docs/protocol.md). The index arithmetic, the barriers and the notification
 * rules follow Xen's public io/ring.h; where that header leaves the shared
 * page trusted, this file does not: each end validates the other's producer
 * index before using it and copies entries out before anyone looks at them,
 * and every access to the shared page is made under a SIGBUS guard
 * (teeif_guard.c), so a peer that truncates the ring file fails its ring,
 * never this process. Each exported function that touches the page is a thin
 * TEEIF_GUARDED wrapper around a static function that does the work; the
 * static functions call each other, never the wrappers (one guard per call).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "teeif.h"
#include "teeif_private.h"

_Static_assert(sizeof(struct teeif_request) == TEEIF_ENTRY_SIZE, "request is 80 bytes");
_Static_assert(sizeof(struct teeif_response) == TEEIF_ENTRY_SIZE, "response is 80 bytes");
_Static_assert(sizeof(union teeif_sring_entry) == TEEIF_ENTRY_SIZE, "slot is 80 bytes");
_Static_assert(offsetof(struct teeif_sring, ring) == TEEIF_RING_HDR_SIZE, "entries at 64");
_Static_assert(offsetof(struct teeif_sring, pvt) == 16, "pvt at 16");
_Static_assert(offsetof(struct teeif_sring, pad) == 20, "pad at 20");
_Static_assert(offsetof(struct teeif_request, a) == 16, "a[] at 16");
_Static_assert(offsetof(struct teeif_response, a) == 16, "a[] at 16");

/*
 * Shared indices are plain uint32_t in the layout; every access to one goes
 * through these relaxed atomics so the compiler reads and writes each exactly
 * once, and the ordering comes from the fences below, placed where io/ring.h
 * places xen_wmb/xen_rmb/xen_mb.
 */
static inline uint32_t idx_load(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void idx_store(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
#define teeif_wmb() atomic_thread_fence(memory_order_release)  /* xen_wmb */
#define teeif_rmb() atomic_thread_fence(memory_order_acquire)  /* xen_rmb */
#define teeif_mb() atomic_thread_fence(memory_order_seq_cst)   /* xen_mb */

uint32_t teeif_ring_entries(uint32_t ring_pages)
{
    /* io/ring.h __CONST_RING_SIZE: round (bytes - header) / entry down to a power of two. */
    uint64_t fit = ((uint64_t)ring_pages * TEEIF_PAGE_SIZE - TEEIF_RING_HDR_SIZE) / TEEIF_ENTRY_SIZE;
    uint32_t n = 1;
    if (ring_pages == 0 || fit == 0)
        return 0;
    while ((uint64_t)n * 2 <= fit)
        n *= 2;
    return n;
}

/* ---- mapping --------------------------------------------------------------------------- */

/* SHARED_RING_INIT with a chosen start: nothing produced, wake on the first entry. */
static int init_shared(struct teeif_sring *s, uint32_t ring_pages, uint32_t start)
{
    struct teeif_guard g;
    if (sigsetjmp(g.env, 0)) {
        teeif_guard_caught(&g);
        return TEEIF_ETRUNC;
    }
    teeif_guard_enter(&g, s, (size_t)ring_pages * TEEIF_PAGE_SIZE);
    idx_store(&s->req_prod, start);
    idx_store(&s->rsp_prod, start);
    idx_store(&s->req_event, start + 1);
    idx_store(&s->rsp_event, start + 1);
    memset(s->pvt, 0, sizeof(s->pvt));
    memset(s->pad, 0, sizeof(s->pad));
    teeif_wmb();
    teeif_guard_leave(&g);
    return 0;
}

int teeif_ring_map(const char *path, uint32_t ring_pages, int create, uint32_t start,
                   struct teeif_sring **out_sring, uint32_t *out_pages)
{
    struct stat st;
    size_t len;
    void *base;
    int fd, err;

    /* before our first mapping exists: a fault in it must find our handler */
    teeif_guard_install();
    if (create) {
        if (ring_pages < 1 || ring_pages > TEEIF_MAX_RING_PAGES)
            return TEEIF_ESIZE;
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return -errno;
        len = (size_t)ring_pages * TEEIF_PAGE_SIZE;
        if (ftruncate(fd, (off_t)len) < 0) {
            err = -errno;
            close(fd);
            unlink(path);
            return err;
        }
    } else {
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        if (fstat(fd, &st) < 0) {
            err = -errno;
            close(fd);
            return err;
        }
        if (st.st_size <= 0 || st.st_size % TEEIF_PAGE_SIZE != 0 ||
            st.st_size / TEEIF_PAGE_SIZE > TEEIF_MAX_RING_PAGES ||
            (ring_pages != 0 && (uint64_t)st.st_size != (uint64_t)ring_pages * TEEIF_PAGE_SIZE)) {
            close(fd);
            return TEEIF_ESIZE;
        }
        ring_pages = (uint32_t)(st.st_size / TEEIF_PAGE_SIZE);
        len = (size_t)st.st_size;
    }
    base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    err = base == MAP_FAILED ? -errno : 0;
    close(fd);  /* the mapping keeps the file */
    if (err) {
        if (create)
            unlink(path);
        return err;
    }
    if (create && init_shared(base, ring_pages, start) < 0) {
        /* a peer opened the new file and shrank it before we wrote the header */
        munmap(base, len);
        unlink(path);
        return TEEIF_ETRUNC;
    }
    *out_sring = base;
    *out_pages = ring_pages;
    return 0;
}

int teeif_ring_unmap(struct teeif_sring *sring, uint32_t ring_pages)
{
    if (munmap(sring, (size_t)ring_pages * TEEIF_PAGE_SIZE) < 0)
        return -errno;
    return 0;
}

int teeif_ring_indices(struct teeif_sring *sring, uint32_t ring_pages, uint32_t *out)
{
    struct teeif_guard g;
    if (sigsetjmp(g.env, 0)) {
        teeif_guard_caught(&g);
        return TEEIF_ETRUNC;
    }
    teeif_guard_enter(&g, sring, (size_t)ring_pages * TEEIF_PAGE_SIZE);
    out[0] = idx_load(&sring->req_prod);
    out[1] = idx_load(&sring->req_event);
    out[2] = idx_load(&sring->rsp_prod);
    out[3] = idx_load(&sring->rsp_event);
    teeif_guard_leave(&g);
    return 0;
}

/* ---- slot copies (the only reads and writes of entries) --------------------------------- */

/* Copy n slots starting at index idx out of the ring: RING_COPY_{REQUEST,RESPONSE}. */
static void copy_out(void *dst, const struct teeif_sring *s, uint32_t nr_ents, uint32_t idx, uint32_t n)
{
    uint32_t first = idx & (nr_ents - 1);
    uint32_t k = n < nr_ents - first ? n : nr_ents - first;
    memcpy(dst, &s->ring[first], (size_t)k * TEEIF_ENTRY_SIZE);
    memcpy((char *)dst + (size_t)k * TEEIF_ENTRY_SIZE, &s->ring[0], (size_t)(n - k) * TEEIF_ENTRY_SIZE);
}

static void copy_in(struct teeif_sring *s, uint32_t nr_ents, uint32_t idx, const void *src, uint32_t n)
{
    uint32_t first = idx & (nr_ents - 1);
    uint32_t k = n < nr_ents - first ? n : nr_ents - first;
    memcpy(&s->ring[first], src, (size_t)k * TEEIF_ENTRY_SIZE);
    memcpy(&s->ring[0], (const char *)src + (size_t)k * TEEIF_ENTRY_SIZE, (size_t)(n - k) * TEEIF_ENTRY_SIZE);
}

/* RING_PUSH_*_AND_CHECK_NOTIFY. `old` is the index this end last published:
 * our own record, not the shared copy, which the peer could have scribbled on. */
static int push_and_check_notify(uint32_t *prod, const uint32_t *event, uint32_t old, uint32_t new,
                                 struct teeif_stats *stats)
{
    int notify;
    teeif_wmb();        /* peer sees the entries before the producer index that covers them */
    idx_store(prod, new);
    teeif_mb();         /* peer sees the new producer index before we read its event index */
    notify = (uint32_t)(new - idx_load(event)) < (uint32_t)(new - old);
    if (notify)
        stats->notify_sent++;
    else
        stats->notify_suppressed++;
    return notify;
}

uint64_t teeif_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- front ------------------------------------------------------------------------------ */

/* Responses the back has produced and we have not consumed; TEEIF_ECORRUPT
 * if rsp_prod claims more than we have outstanding (RING_RESPONSE_PROD_OVERFLOW,
 * tightened: a response needs a request) or ran backwards. */
static int front_avail(struct teeif_front_ring *f)
{
    uint32_t prod = idx_load(&f->sring->rsp_prod);
    uint32_t outstanding = f->req_prod_pvt - f->rsp_cons;
    if ((uint32_t)(prod - f->rsp_cons) > outstanding) {
        f->bad_prod = prod;
        return TEEIF_ECORRUPT;
    }
    teeif_rmb();        /* entries read below are the ones produced before prod */
    return (int)(uint32_t)(prod - f->rsp_cons);
}

static int front_attach(struct teeif_front_ring *f)
{
    uint32_t req_prod = idx_load(&f->sring->req_prod), rsp_prod = idx_load(&f->sring->rsp_prod);
    if ((uint32_t)(req_prod - rsp_prod) > f->nr_ents) {
        f->bad_prod = rsp_prod;
        return TEEIF_ECORRUPT;
    }
    /* FRONT_RING_ATTACH: resume producing at req_prod; requests still in flight
     * are answered from rsp_prod on and consumed by whoever holds this end now. */
    f->req_prod_pvt = req_prod;
    f->rsp_cons = rsp_prod;
    return 0;
}

int teeif_front_attach(struct teeif_front_ring *f, struct teeif_sring *s, uint32_t ring_pages)
{
    memset(f, 0, sizeof(*f));
    f->nr_ents = teeif_ring_entries(ring_pages);
    f->ring_pages = ring_pages;
    f->sring = s;
    TEEIF_GUARDED(f, front_attach(f));
}

uint32_t teeif_front_free_requests(const struct teeif_front_ring *f)
{
    return f->nr_ents - (f->req_prod_pvt - f->rsp_cons);  /* RING_FREE_REQUESTS */
}

static int front_push_requests(struct teeif_front_ring *f, const struct teeif_request *reqs,
                               uint32_t n, int *notify)
{
    uint32_t old = f->req_prod_pvt;
    *notify = 0;
    if (n == 0)
        return 0;
    if (n > teeif_front_free_requests(f))
        return TEEIF_EFULL;
    copy_in(f->sring, f->nr_ents, old, reqs, n);
    f->req_prod_pvt = old + n;
    *notify = push_and_check_notify(&f->sring->req_prod, &f->sring->req_event, old, old + n, &f->stats);
    f->stats.pushes += n;
    f->stats.batches++;
    return 0;
}

int teeif_front_push_requests(struct teeif_front_ring *f, const struct teeif_request *reqs,
                              uint32_t n, int *notify)
{
    *notify = 0;
    TEEIF_GUARDED(f, front_push_requests(f, reqs, n, notify));
}

static int front_pop_responses(struct teeif_front_ring *f, struct teeif_response *out, uint32_t max)
{
    int avail = front_avail(f);
    uint32_t n;
    if (avail <= 0)
        return avail;
    n = (uint32_t)avail < max ? (uint32_t)avail : max;
    if (n == 0)
        return 0;
    copy_out(out, f->sring, f->nr_ents, f->rsp_cons, n);
    f->rsp_cons += n;
    f->stats.pops += n;
    f->stats.batches++;
    return (int)n;
}

int teeif_front_pop_responses(struct teeif_front_ring *f, struct teeif_response *out, uint32_t max)
{
    TEEIF_GUARDED(f, front_pop_responses(f, out, max));
}

int teeif_front_unconsumed(struct teeif_front_ring *f)
{
    TEEIF_GUARDED(f, front_avail(f));
}

static int front_final_check(struct teeif_front_ring *f)
{
    int avail = front_avail(f);
    if (avail != 0)
        return avail;
    /* RING_FINAL_CHECK_FOR_RESPONSES: ask to be woken by the very next response ... */
    idx_store(&f->sring->rsp_event, f->rsp_cons + 1);
    f->stats.final_checks++;
    teeif_mb();         /* ... and make that request visible before looking one last time */
    avail = front_avail(f);
    if (avail == 0)
        f->stats.sleeps++;
    return avail;
}

static int front_spin(struct teeif_front_ring *f, uint64_t spin_ns);

static int front_poll(struct teeif_front_ring *f, uint64_t spin_ns)
{
    /* spin for the window (no final check), then the io/ring.h final check */
    int avail = spin_ns ? front_spin(f, spin_ns) : 0;
    return avail != 0 ? avail : front_final_check(f);
}

static int front_spin(struct teeif_front_ring *f, uint64_t spin_ns)
{
    uint64_t t0 = teeif_now_ns();
    unsigned spins = 0;
    for (;;) {
        int avail = front_avail(f);
        if (avail != 0) {
            if (avail > 0)
                f->stats.poll_hits++;
            return avail;
        }
        if (teeif_now_ns() - t0 >= spin_ns)
            return 0;
        teeif_spin_step(&spins);
    }
}

int teeif_front_final_check(struct teeif_front_ring *f)
{
    TEEIF_GUARDED(f, front_final_check(f));
}

int teeif_front_poll(struct teeif_front_ring *f, uint64_t spin_ns)
{
    TEEIF_GUARDED(f, front_poll(f, spin_ns));
}

int teeif_front_spin(struct teeif_front_ring *f, uint64_t spin_ns)
{
    TEEIF_GUARDED(f, front_spin(f, spin_ns));
}

/* Spin for up to spin_ns for the oldest response and take it only if its
 * id is id: front_call's wait, and teeif_front_await's. */
static int front_take(struct teeif_front_ring *f, uint64_t id, uint64_t spin_ns, struct teeif_response *out,
                      uint64_t *times)
{
    uint64_t t0 = teeif_now_ns();
    unsigned spins = 0;
    for (;;) {
        int avail = front_avail(f);
        if (avail < 0)
            return TEEIF_CALL_FAILED;   /* bad_prod says which index; no slot was read */
        if (avail > 0) {
            f->stats.poll_hits++;
            /* RING_COPY_RESPONSE, then decide on the copy: the back may rewrite the slot */
            copy_out(out, f->sring, f->nr_ents, f->rsp_cons, 1);
            if (out->id != id)
                return TEEIF_CALL_OTHER;
            if (times != NULL)
                times[1] = teeif_now_ns();
            f->rsp_cons++;
            f->stats.pops++;
            f->stats.batches++;
            return TEEIF_CALL_ANSWERED;
        }
        if (teeif_now_ns() - t0 >= spin_ns)
            return TEEIF_CALL_WAITING;
        teeif_spin_step(&spins);
    }
}

/*
 * teeif_front_call's body (under the caller's guard): the push, then
 * front_take, which copies out what it finds and decides on the copy: the
 * caller's own answer is taken, anything else is left for the caller's pop,
 * which then owns the decision (hand it to another waiter, drop it, report
 * the index). Errors after the push are results, not negative codes: the
 * request is on the ring whatever happens next.
 */
static int front_call(struct teeif_front_ring *f, const struct teeif_request *req, uint64_t spin_ns,
                      int evtchn_fd, struct teeif_response *out, int *notify, uint64_t *times)
{
    int rc = front_push_requests(f, req, 1, notify);
    if (rc < 0)
        return rc;
    if (*notify) {
        /* the back is asleep (it armed req_event): a spin would only wait out its wake-up */
        rc = teeif_evtchn_notify(evtchn_fd);
        if (rc < 0) {
            *notify = rc;
            return TEEIF_CALL_NOTIFY_FAILED;
        }
        *notify = rc ? TEEIF_NOTIFY_SENT : TEEIF_NOTIFY_PENDING;
    }
    if (times != NULL)
        times[0] = teeif_now_ns();
    return front_take(f, req->id, spin_ns, out, times);
}

int teeif_front_await(struct teeif_front_ring *f, uint64_t id, uint64_t spin_ns, struct teeif_response *out,
                      uint64_t *times)
{
    TEEIF_GUARDED(f, front_take(f, id, spin_ns, out, times));
}

static int front_call_guarded(struct teeif_front_ring *f, const struct teeif_request *req, uint64_t spin_ns,
                              int evtchn_fd, struct teeif_response *out, int *notify, uint64_t *times)
{
    TEEIF_GUARDED(f, front_call(f, req, spin_ns, evtchn_fd, out, notify, times));
}

int teeif_front_call(struct teeif_front_ring *f, const struct teeif_request *req, uint64_t spin_ns,
                     int evtchn_fd, struct teeif_response *out, int *notify, uint64_t *times)
{
    uint32_t before = f->req_prod_pvt;
    int rc;
    *notify = TEEIF_NOTIFY_NONE;
    if (times != NULL)
        times[0] = times[1] = 0;
    rc = front_call_guarded(f, req, spin_ns, evtchn_fd, out, notify, times);
    /* The guard answers a fault with TEEIF_ETRUNC wherever it happened; one
     * after the push (our private producer index covers the request) is a
     * failure of a pushed request, which the caller's receiver meets again
     * (a truncated end stays truncated). */
    if (rc == TEEIF_ETRUNC && f->req_prod_pvt != before)
        return TEEIF_CALL_FAILED;
    return rc;
}

/* ---- back ------------------------------------------------------------------------------- */

/* Requests the front has produced and we have not consumed. The shared page is
 * hostile: RING_REQUEST_PROD_OVERFLOW (more than a ring ahead of the responses
 * we have produced) and a req_prod behind req_cons are both TEEIF_ECORRUPT,
 * and nothing past them is read. */
static int back_avail(struct teeif_back_ring *b)
{
    uint32_t prod = idx_load(&b->sring->req_prod);
    uint32_t ahead = prod - b->rsp_prod_pvt;
    if (ahead > b->nr_ents || (uint32_t)(prod - b->req_cons) > ahead) {
        b->bad_prod = prod;
        return TEEIF_ECORRUPT;
    }
    teeif_rmb();        /* requests read below are the ones produced before prod */
    return (int)(uint32_t)(prod - b->req_cons);
}

static int back_attach(struct teeif_back_ring *b)
{
    uint32_t rsp_prod = idx_load(&b->sring->rsp_prod);
    /* BACK_RING_ATTACH at rsp_prod: requests taken but unanswered by a back
     * that died are taken again. */
    b->rsp_prod_pvt = rsp_prod;
    b->req_cons = rsp_prod;
    return back_avail(b) < 0 ? TEEIF_ECORRUPT : 0;
}

int teeif_back_attach(struct teeif_back_ring *b, struct teeif_sring *s, uint32_t ring_pages)
{
    memset(b, 0, sizeof(*b));
    b->nr_ents = teeif_ring_entries(ring_pages);
    b->ring_pages = ring_pages;
    b->sring = s;
    TEEIF_GUARDED(b, back_attach(b));
}

static int back_pop_requests(struct teeif_back_ring *b, struct teeif_request *out, uint32_t max)
{
    int avail = back_avail(b);
    uint32_t n;
    if (avail <= 0)
        return avail;
    n = (uint32_t)avail < max ? (uint32_t)avail : max;
    if (n == 0)
        return 0;
    copy_out(out, b->sring, b->nr_ents, b->req_cons, n);
    b->req_cons += n;
    b->stats.pops += n;
    b->stats.batches++;
    return (int)n;
}

int teeif_back_pop_requests(struct teeif_back_ring *b, struct teeif_request *out, uint32_t max)
{
    TEEIF_GUARDED(b, back_pop_requests(b, out, max));
}

static int back_peek_request(struct teeif_back_ring *b, struct teeif_request *out)
{
    int avail = back_avail(b);
    if (avail > 0)
        copy_out(out, b->sring, b->nr_ents, b->req_cons, 1);
    return avail;
}

int teeif_back_peek_request(struct teeif_back_ring *b, struct teeif_request *out)
{
    TEEIF_GUARDED(b, back_peek_request(b, out));
}

static int back_skip_requests(struct teeif_back_ring *b, uint32_t n)
{
    int avail = back_avail(b);
    if (avail < 0)
        return avail;
    if (n > (uint32_t)avail)
        return TEEIF_ENOREQ;
    b->req_cons += n;
    b->stats.pops += n;
    if (n)
        b->stats.batches++;
    return (int)n;
}

int teeif_back_skip_requests(struct teeif_back_ring *b, uint32_t n)
{
    TEEIF_GUARDED(b, back_skip_requests(b, n));
}

static int back_push_responses(struct teeif_back_ring *b, const struct teeif_response *rsps,
                               uint32_t n, int *notify)
{
    uint32_t old = b->rsp_prod_pvt;
    *notify = 0;
    if (n == 0)
        return 0;
    if (n > b->req_cons - old)
        return TEEIF_ENOREQ;
    copy_in(b->sring, b->nr_ents, old, rsps, n);
    b->rsp_prod_pvt = old + n;
    *notify = push_and_check_notify(&b->sring->rsp_prod, &b->sring->rsp_event, old, old + n, &b->stats);
    b->stats.pushes += n;
    b->stats.batches++;
    return 0;
}

int teeif_back_push_responses(struct teeif_back_ring *b, const struct teeif_response *rsps,
                              uint32_t n, int *notify)
{
    *notify = 0;
    TEEIF_GUARDED(b, back_push_responses(b, rsps, n, notify));
}

int teeif_back_unconsumed(struct teeif_back_ring *b)
{
    TEEIF_GUARDED(b, back_avail(b));
}

static int back_recheck_notify(struct teeif_back_ring *b)
{
    uint32_t prod = b->rsp_prod_pvt;    /* our record of what we published, not the shared copy */
    teeif_mb();         /* like a push's: our rsp_prod is out before we read rsp_event */
    /* push_and_check_notify's test with old = prod - nr_ents: every slot's response */
    return (uint32_t)(prod - idx_load(&b->sring->rsp_event)) < b->nr_ents;
}

int teeif_back_recheck_notify(struct teeif_back_ring *b)
{
    TEEIF_GUARDED(b, back_recheck_notify(b));
}

static int back_final_check(struct teeif_back_ring *b)
{
    int avail = back_avail(b);
    if (avail != 0)
        return avail;
    /* RING_FINAL_CHECK_FOR_REQUESTS: wake me for the next request, then look again. */
    idx_store(&b->sring->req_event, b->req_cons + 1);
    b->stats.final_checks++;
    teeif_mb();
    avail = back_avail(b);
    if (avail == 0)
        b->stats.sleeps++;
    return avail;
}

static int back_spin(struct teeif_back_ring *b, uint64_t spin_ns);

static int back_poll(struct teeif_back_ring *b, uint64_t spin_ns)
{
    /* spin for the window (no final check), then the io/ring.h final check */
    int avail = spin_ns ? back_spin(b, spin_ns) : 0;
    return avail != 0 ? avail : back_final_check(b);
}

static int back_spin(struct teeif_back_ring *b, uint64_t spin_ns)
{
    uint64_t t0 = teeif_now_ns();
    unsigned spins = 0;
    for (;;) {
        int avail = back_avail(b);
        if (avail != 0) {
            if (avail > 0)
                b->stats.poll_hits++;
            return avail;
        }
        if (teeif_now_ns() - t0 >= spin_ns)
            return 0;
        teeif_spin_step(&spins);
    }
}

int teeif_back_final_check(struct teeif_back_ring *b)
{
    TEEIF_GUARDED(b, back_final_check(b));
}

int teeif_back_poll(struct teeif_back_ring *b, uint64_t spin_ns)
{
    TEEIF_GUARDED(b, back_poll(b, spin_ns));
}

int teeif_back_spin(struct teeif_back_ring *b, uint64_t spin_ns)
{
    TEEIF_GUARDED(b, back_spin(b, spin_ns));
}

int teeif_back_spin_any(struct teeif_back_ring **rings, uint32_t n, uint64_t spin_ns,
                        uint32_t *ready)
{
    uint32_t nserved;
    /* the spin of teeif_fast.c with no table: nothing is answered, served[] never written */
    return teeif_fast_spin_any(NULL, rings, NULL, n, spin_ns, ready, NULL, &nserved);
}
