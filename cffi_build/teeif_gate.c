/*
 * teeif_gate.c: the SMC gate's per-hypercall path (see teeif.h, "The SMC
 * gate's hypercall path"). The gate is Xen's narrow hypercall for the stub
 * domain: it admits an SMC only for a domain the toolstack assigned and
 * stamps the client ID itself (docs/smc-gate.md). Here are its checks, its
 * assignment table and the ring work around one hypercall, so that the
 * gate's thread runs the interpreter for the TEE model alone. Everything
 * that touches the mapped ring goes through the guarded functions of
 * teeif_ring.c; this file only decides.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "teeif.h"
#include "teeif_private.h"

#define NO_DOMID (-1)

struct teeif_gate {
    /* Guards assigned[] and in_tee: a check and its in-TEE mark are one step,
     * so an unassign that returns "none in the TEE" leaves nothing admitted
     * behind it (the platform's own VM_DESTROYED is then the last word). */
    pthread_mutex_t lock;
    int64_t in_tee;             /* domid of the admitted hypercall in the TEE, NO_DOMID: none */
    uint32_t watchers;          /* owners waiting for the mark to clear (teeif_gate_watch) */
    struct teeif_gate_policy policy;
    /* written by the serving thread alone, read by any (relaxed atomics) */
    struct teeif_gate_counters counters;
    uint8_t assigned[(TEEIF_GATE_DOMID_FIRST_RESERVED + 7) / 8];
};

static int listed(const uint64_t *calls, uint32_t n, uint64_t a0)
{
    for (uint32_t i = 0; i < n; i++)
        if (calls[i] == a0)
            return 1;
    return 0;
}

/* Callers hold g->lock. */
static int is_assigned(const struct teeif_gate *g, uint32_t domid)
{
    return domid < TEEIF_GATE_DOMID_FIRST_RESERVED && (g->assigned[domid / 8] >> (domid % 8)) & 1;
}

static int refuse(int32_t *status, int32_t errno_value)
{
    *status = errno_value;
    return TEEIF_GATE_REFUSE;
}

/* The verdict on req (g->lock held). The order of the checks decides which
 * refusal a request that fails several gets; stubdom/platform/gate.py's
 * documented order (docs/smc-gate.md, "Entries"). */
static int check(const struct teeif_gate *g, const struct teeif_request *req, int32_t *status)
{
    uint32_t domid = req->vcpu;
    if (req->flags == TEEIF_GATE_OP_SMC) {
        uint64_t owner;
        if (domid >= TEEIF_GATE_DOMID_FIRST_RESERVED)
            return refuse(status, TEEIF_GATE_EINVAL);
        if (!is_assigned(g, domid))
            return TEEIF_GATE_UNASSIGNED;
        /* the SMCCC owner of the function ID in a0's low 32 bits: the gate
         * reaches the secure world's OS, never PSCI or SiP services */
        owner = (req->a[0] >> TEEIF_GATE_OWNER_SHIFT) & TEEIF_GATE_OWNER_MASK;
        if (owner < TEEIF_GATE_OWNER_FIRST || owner > TEEIF_GATE_OWNER_LAST)
            return refuse(status, TEEIF_GATE_EPERM);
        return TEEIF_GATE_ADMIT;
    }
    if (req->flags == TEEIF_GATE_OP_HYP) {
        const struct teeif_gate_policy *p = &g->policy;
        if (listed(p->probes, p->nprobes, req->a[0]))
            return TEEIF_GATE_ADMIT;
        if (!listed(p->domain_calls, p->ndomain_calls, req->a[0]))
            return refuse(status, TEEIF_GATE_EPERM);
        if (domid >= TEEIF_GATE_DOMID_FIRST_RESERVED)
            return refuse(status, TEEIF_GATE_EINVAL);
        if (!is_assigned(g, domid))
            return TEEIF_GATE_UNASSIGNED;
        /* the partition's client ID, named a second time: a1 must agree */
        return req->a[1] == (uint64_t)domid + 1 ? TEEIF_GATE_ADMIT : refuse(status, TEEIF_GATE_EPERM);
    }
    return refuse(status, TEEIF_GATE_EINVAL);
}

struct teeif_gate *teeif_gate_new(const struct teeif_gate_policy *policy)
{
    struct teeif_gate *g;
    if (policy->nprobes > TEEIF_GATE_MAX_CALLS || policy->ndomain_calls > TEEIF_GATE_MAX_CALLS)
        return NULL;
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    if (pthread_mutex_init(&g->lock, NULL) != 0) {
        free(g);
        return NULL;
    }
    g->in_tee = NO_DOMID;
    g->policy = *policy;
    return g;
}

void teeif_gate_free(struct teeif_gate *g)
{
    if (g == NULL)
        return;
    pthread_mutex_destroy(&g->lock);
    free(g);
}

int teeif_gate_assign(struct teeif_gate *g, uint32_t domid, uint32_t assigned)
{
    int busy;
    uint8_t bit;
    if (domid >= TEEIF_GATE_DOMID_FIRST_RESERVED)
        return -EINVAL;
    bit = (uint8_t)(1u << (domid % 8));
    pthread_mutex_lock(&g->lock);
    if (assigned)
        g->assigned[domid / 8] |= bit;
    else
        g->assigned[domid / 8] &= (uint8_t)~bit;
    busy = g->in_tee == (int64_t)domid;
    pthread_mutex_unlock(&g->lock);
    return busy;
}

int teeif_gate_in_tee(struct teeif_gate *g, uint32_t domid)
{
    int busy;
    pthread_mutex_lock(&g->lock);
    busy = g->in_tee == (int64_t)domid;
    pthread_mutex_unlock(&g->lock);
    return busy;
}

int teeif_gate_judge(struct teeif_gate *g, struct teeif_request *req, int32_t *status)
{
    int verdict;
    *status = 0;
    pthread_mutex_lock(&g->lock);
    verdict = check(g, req, status);
    if (verdict == TEEIF_GATE_ADMIT) {
        g->in_tee = req->vcpu;
        /* the gate, never the stub domain, chooses the client ID */
        req->a[7] = req->flags == TEEIF_GATE_OP_SMC ? (uint64_t)req->vcpu + 1 : TEEIF_GATE_HYP_CLIENT_ID;
    }
    pthread_mutex_unlock(&g->lock);
    return verdict;
}

int teeif_gate_release(struct teeif_gate *g)
{
    uint32_t watchers;
    pthread_mutex_lock(&g->lock);
    g->in_tee = NO_DOMID;
    watchers = g->watchers;
    pthread_mutex_unlock(&g->lock);
    return watchers > 0;
}

int teeif_gate_watch(struct teeif_gate *g, int delta)
{
    int64_t n;
    pthread_mutex_lock(&g->lock);
    n = (int64_t)g->watchers + delta;
    if (n >= 0 && n <= UINT32_MAX)
        g->watchers = (uint32_t)n;
    pthread_mutex_unlock(&g->lock);
    return n < 0 || n > UINT32_MAX ? -EINVAL : (int)n;
}

static void count(uint64_t *counter)
{
    /* one writer: a relaxed store is enough for readers on other threads */
    __atomic_store_n(counter, *counter + 1, __ATOMIC_RELAXED);
}

/* Sleep until fd or wake_fd is readable: 1 fd (drain it), 0 wake_fd, < 0 errno. */
static int sleep_on(int fd, int wake_fd)
{
    struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = wake_fd, .events = POLLIN } };
    for (;;) {
        int r = poll(p, wake_fd >= 0 ? 2 : 1, -1);
        if (r < 0 && errno == EINTR)
            continue;   /* a signal for another thread of the platform: nothing for us */
        if (r < 0)
            return -errno;
        if (wake_fd >= 0 && p[1].revents)
            return 0;   /* close(): stop before anything else */
        if (p[0].revents & POLLNVAL)
            return -EBADF;
        return 1;       /* POLLIN, POLLHUP and POLLERR all mean "drain now" */
    }
}

int teeif_gate_next(struct teeif_gate *g, struct teeif_back_ring *b, uint64_t spin_ns, int fd, int wake_fd,
                    struct teeif_request *out, int32_t *status, uint64_t *times)
{
    for (;;) {
        /* without a channel nobody could wake us: look once, never arm req_event */
        int rc = fd < 0 ? teeif_back_unconsumed(b) : teeif_back_poll(b, spin_ns);
        if (rc < 0)
            return rc;
        if (rc > 0) {
            if (times != NULL)
                times[0] = teeif_now_ns();
            rc = teeif_back_pop_requests(b, out, 1);
            if (rc < 0)
                return rc;
            if (rc > 0) {
                count(&g->counters.batches);
                rc = teeif_gate_judge(g, out, status);
                if (times != NULL)
                    times[1] = teeif_now_ns();
                return rc;
            }
            continue;
        }
        if (fd < 0)
            return TEEIF_GATE_IDLE;
        rc = sleep_on(fd, wake_fd);
        if (rc <= 0)
            return rc;
        rc = teeif_evtchn_drain(fd);
        if (rc < 0)
            return rc;  /* TEEIF_EPEER: the stub domain is gone */
        if (rc > 0)
            count(&g->counters.wakeups);
    }
}

int teeif_gate_answer(struct teeif_gate *g, struct teeif_back_ring *b, int fd, uint64_t id, int32_t status,
                      const uint64_t *a)
{
    struct teeif_response rsp;
    int notify, rc, watched;
    /* the TEE has returned: unassign may go on, whatever the push meets */
    watched = teeif_gate_release(g) ? TEEIF_GATE_WATCHED_BIT : 0;
    memset(&rsp, 0, sizeof(rsp));
    rsp.id = id;
    rsp.status = status;
    if (status == 0)
        memcpy(rsp.a, a, sizeof(rsp.a));   /* a refusal carries nothing of anyone's registers */
    rc = teeif_back_push_responses(b, &rsp, 1, &notify);
    if (rc < 0)
        return rc;
    if (notify && fd >= 0) {
        rc = teeif_evtchn_notify(fd);
        if (rc < 0)
            return rc;
    }
    return (notify && fd >= 0) | watched;
}

int teeif_gate_answer_next(struct teeif_gate *g, struct teeif_back_ring *b, int fd, uint64_t id, int32_t status,
                           const uint64_t *a, uint64_t spin_ns, int wake_fd, struct teeif_request *out,
                           int32_t *out_status, uint64_t *times)
{
    int rc = teeif_gate_answer(g, b, fd, id, status, a);
    if (rc < 0)
        return rc;
    if (rc & TEEIF_GATE_WATCHED_BIT)
        return TEEIF_GATE_WATCHED;  /* the owner wakes them before it waits again */
    return teeif_gate_next(g, b, spin_ns, fd, wake_fd, out, out_status, times);
}

void teeif_gate_counters(struct teeif_gate *g, struct teeif_gate_counters *out)
{
    out->batches = __atomic_load_n(&g->counters.batches, __ATOMIC_RELAXED);
    out->wakeups = __atomic_load_n(&g->counters.wakeups, __ATOMIC_RELAXED);
}
