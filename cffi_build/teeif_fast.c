/*
 * teeif_fast.c: answering requests without the backend's interpreter (see
 * teeif.h, "Answering from C"). The stub domain gives it the calls that
 * need no judgment of its own once policy has allowed them (OP-TEE's
 * identity queries): a fixed answer, or one SMC forwarded through the gate.
 * Everything that touches a mapped ring goes through the guarded functions
 * of teeif_ring.c; this file only decides.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "teeif.h"
#include "teeif_private.h"

#define U32 0xFFFFFFFFu

/* The rule of table t that answers req on ring r, or NULL. */
static const struct teeif_fast_rule *rule_for(const struct teeif_fast_table *t,
                                              const struct teeif_fast_ring *r,
                                              const struct teeif_request *req, uint32_t *index)
{
    uint32_t function = (uint32_t)(req->a[0] & U32);
    if (req->id & t->skip_id_bits)
        return NULL;
    for (uint32_t i = 0; i < t->nrules && i < TEEIF_FAST_MAX_RULES; i++) {
        if (t->rules[i].function == function) {
            if (!(r->allow & (1u << i)))
                return NULL;
            *index = i;
            return &t->rules[i];
        }
    }
    return NULL;
}

/* Push q (its id is given here) on the forwarding ring and wait for the
 * answer with that id: 0 and *rsp filled (its status whatever it is), or
 * < 0 when the ring or its channel failed (a TEEIF_E* code or a negative
 * errno; TEEIF_ETIMEOUT: no answer within fwd_timeout_ns). */
static int forward_req(struct teeif_fast_table *t, struct teeif_request *q, struct teeif_response *rsp,
                       struct teeif_fast_trace *tr)
{
    uint64_t deadline;
    int notify, rc;

    q->id = t->fwd_next_id & t->fwd_id_mask;
    t->fwd_next_id = (q->id + 1) & t->fwd_id_mask;
    if (tr != NULL) {
        q->id |= tr->id & t->trace_bits;   /* the gate traces its side of a sampled call */
        tr->fwd_id = q->id;
        tr->fwd_start = teeif_now_ns();
    }
    rc = teeif_front_push_requests(t->fwd, q, 1, &notify);
    if (rc < 0)
        return rc;
    t->fwd_calls++;
    if (notify && (rc = teeif_evtchn_notify(t->fwd_fd)) < 0)
        return rc;
    if (tr != NULL)
        tr->fwd_pushed = teeif_now_ns();
    deadline = teeif_now_ns() + (uint64_t)t->fwd_timeout_ns;
    for (;;) {
        while ((rc = teeif_front_pop_responses(t->fwd, rsp, 1)) > 0) {
            if (rsp->id != q->id) {
                t->fwd_dropped++;   /* late: a predecessor's, or an abandoned one's */
                continue;
            }
            if (tr != NULL)
                tr->fwd_popped = teeif_now_ns();
            return 0;
        }
        if (rc < 0)
            return rc;
        rc = teeif_front_poll(t->fwd, t->fwd_spin_ns);  /* spin, then the final check */
        if (rc < 0)
            return rc;
        if (rc > 0)
            continue;
        uint64_t now = teeif_now_ns();
        if (now >= deadline)
            return TEEIF_ETIMEOUT;
        rc = teeif_evtchn_wait(t->fwd_fd, (int64_t)(deadline - now));
        if (rc == -EINTR)
            continue;   /* a signal for the owner (SIGHUP: reload): its handler runs after the call */
        if (rc < 0)
            return rc;
        if (rc > 0) {
            rc = teeif_evtchn_drain(t->fwd_fd);
            if (rc < 0)
                return rc;
            if (rc > 0)
                t->fwd_wakeups++;
        }
    }
}

/* A rule's request, (function, 0, ..., 0): 0 and out[] filled; 1 if the
 * answer's status was not 0 (in *status); < 0 the ring or its channel
 * failed. */
static int forward(struct teeif_fast_table *t, uint32_t target, uint32_t function, uint64_t out[8],
                   int32_t *status, struct teeif_fast_trace *tr)
{
    struct teeif_request q;
    struct teeif_response rsp;
    int rc;

    memset(&q, 0, sizeof(q));
    q.vcpu = target;
    q.flags = t->fwd_flags;
    q.a[0] = function;
    rc = forward_req(t, &q, &rsp, tr);
    if (rc < 0)
        return rc;
    if (rsp.status != 0) {
        *status = rsp.status;
        return 1;
    }
    memcpy(out, rsp.a, sizeof(rsp.a));
    return 0;
}

int teeif_fast_forward(struct teeif_fast_table *t, uint32_t target, uint32_t flags, const uint64_t *a,
                       struct teeif_response *out)
{
    struct teeif_request q;

    if (t->fwd == NULL)
        return -22;     /* -EINVAL: no forwarding ring */
    memset(&q, 0, sizeof(q));
    q.vcpu = target;
    q.flags = flags;
    memcpy(q.a, a, sizeof(q.a));
    return forward_req(t, &q, out, NULL);
}

static void record_latency(struct teeif_fast_ring *r, uint64_t ns)
{
    r->latency_ns[r->latency_next % TEEIF_FAST_LATENCIES] = ns > U32 ? U32 : (uint32_t)ns;
    r->latency_next++;
}

int teeif_fast_serve(struct teeif_fast_table *t, struct teeif_back_ring *b, struct teeif_fast_ring *r)
{
    int answered = 0;
    /* no channel: an answer could not be announced, so none is given */
    while (t->enabled && !r->paused && r->evtchn_fd >= 0) {
        struct teeif_request req;
        struct teeif_response rsp;
        const struct teeif_fast_rule *rule;
        struct teeif_fast_trace tr, *trp = NULL;
        uint32_t index = 0;
        uint64_t t0 = teeif_now_ns();
        int notify, rc;
        /* requests the owner took and has not answered yet come first: C
         * answers nothing while any is owed, so a ring is answered in order */
        if (b->req_cons != b->rsp_prod_pvt)
            break;
        rc = teeif_back_peek_request(b, &req);
        if (rc <= 0)
            return rc < 0 ? rc : answered;
        rule = rule_for(t, r, &req, &index);
        if (rule == NULL)
            break;  /* the owner's, and so is everything behind it */
        if (req.id & t->trace_bits) {
            memset(&tr, 0, sizeof(tr));
            tr.id = req.id;
            tr.target = r->target;
            tr.function = rule->function;
            tr.peek_start = t0;
            tr.peek_end = teeif_now_ns();
            trp = &tr;
        }
        memset(&rsp, 0, sizeof(rsp));
        rsp.id = req.id;
        if (rule->forward) {
            uint64_t got[8];
            int32_t status = 0;
            rc = forward(t, r->target, rule->function, got, &status, trp);
            if (rc != 0) {
                /* refused: this request is the owner's to send again and answer as it
                 * answers a refusal; the ring itself failed, or timed out: the owner's
                 * own path meets that failure and deals with it, the table stops */
                t->fwd_error = rc > 0 ? status : rc;
                t->fwd_failures++;
                r->paused = 1;
                if (rc < 0)
                    t->enabled = 0;
                break;
            }
            for (uint32_t i = 0; i < rule->keep && i < 8; i++)
                rsp.a[i] = got[i] & U32;
        } else {
            memcpy(rsp.a, rule->answer, sizeof(rsp.a));
        }
        rc = teeif_back_skip_requests(b, 1);
        if (rc < 0)
            return rc;
        if (trp != NULL)
            tr.push_start = teeif_now_ns();
        rc = teeif_back_push_responses(b, &rsp, 1, &notify);
        if (rc < 0)
            return rc;
        if (notify && teeif_evtchn_notify(r->evtchn_fd) == TEEIF_EPEER) {
            r->peer_gone = 1;   /* the owner finds the end-of-file on its channel */
            r->paused = 1;
        }
        r->answered[index]++;
        record_latency(r, teeif_now_ns() - t0);
        answered++;
        if (trp != NULL) {
            tr.push_end = teeif_now_ns();
            t->traces[t->traces_next % TEEIF_FAST_TRACES] = tr;
            t->traces_next++;
        }
    }
    return answered;
}

int teeif_fast_serve_pop(struct teeif_fast_table *t, struct teeif_back_ring *b, struct teeif_fast_ring *r,
                         struct teeif_request *out, uint32_t max, uint32_t *answered)
{
    int rc = 0;
    *answered = 0;
    if (t != NULL && r != NULL) {
        rc = teeif_fast_serve(t, b, r);
        if (rc < 0)
            return rc;
        *answered = (uint32_t)rc;
        /* an empty ring stays empty for us: a request landing now is C's next look */
        rc = teeif_back_unconsumed(b);
        if (rc <= 0)
            return rc;
    }
    return teeif_back_pop_requests(b, out, max);
}

int teeif_fast_spin_any(struct teeif_fast_table *t, struct teeif_back_ring **rings,
                        struct teeif_fast_ring **fast, uint32_t n, uint64_t spin_ns,
                        uint32_t *ready, uint32_t *served, uint32_t *nserved)
{
    uint64_t t0 = teeif_now_ns();
    unsigned spins = 0;
    *nserved = 0;
    for (;;) {
        uint32_t found = 0;
        for (uint32_t i = 0; i < n; i++) {
            struct teeif_back_ring *b = rings[i];
            int avail;
            if (b == NULL)
                continue;
            avail = teeif_back_unconsumed(b);
            if (avail > 0 && t != NULL && fast != NULL && fast[i] != NULL) {
                int done = teeif_fast_serve(t, b, fast[i]);
                if (done > 0) {
                    uint32_t k = 0;
                    while (k < *nserved && served[k] != i)
                        k++;
                    if (k == *nserved)
                        served[(*nserved)++] = i;
                    avail = teeif_back_unconsumed(b);
                } else if (done < 0) {
                    avail = done;
                }
            }
            /* work left, or TEEIF_ECORRUPT / TEEIF_ETRUNC: the owner's pop reports those */
            if (avail != 0) {
                if (avail > 0)
                    b->stats.poll_hits++;
                ready[found++] = i;
            }
        }
        if (found)
            return (int)found;
        if (teeif_now_ns() - t0 >= spin_ns)
            return 0;
        teeif_spin_step(&spins);
    }
}
