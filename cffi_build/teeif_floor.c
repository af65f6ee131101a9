/*
 * teeif_floor.c: the transport floor. Both ends of a ping-pong through the
 * same ring functions and the same event channel as the real paths, with no
 * Python in the loop: each process enters C once. What this measures is the
 * cost below which no teeif implementation on this machine can go.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>

#include "teeif.h"
#include "teeif_private.h"

/* Sleep on the channel until notified, then drain (the wake-up protocol). */
static int sleep_on_channel(int fd)
{
    int r;
    do
        r = teeif_evtchn_wait(fd, -1);
    while (r == -EINTR);
    if (r < 0)
        return r;
    r = teeif_evtchn_drain(fd);
    return r < 0 ? r : 0;
}

static int notify_if(int notify, int fd)
{
    int r = notify ? teeif_evtchn_notify(fd) : 0;
    return r < 0 ? r : 0;
}

int teeif_floor_front_run(struct teeif_front_ring *f, int fd, uint32_t rounds, uint32_t batch,
                          uint64_t spin_ns, uint64_t *samples_ns)
{
    struct teeif_request *reqs;
    struct teeif_response *rsps;
    uint64_t id = 0;
    int r = 0, notify;

    if (batch == 0 || batch > f->nr_ents)
        return -EINVAL;
    reqs = calloc(batch, sizeof(*reqs));
    rsps = calloc(batch, sizeof(*rsps));
    if (!reqs || !rsps) {
        r = -ENOMEM;
        goto out;
    }
    for (uint32_t round = 0; round < rounds; round++) {
        uint64_t t0 = teeif_now_ns();
        uint32_t got = 0;
        for (uint32_t i = 0; i < batch; i++) {
            reqs[i].id = id++;
            reqs[i].vcpu = i;
            for (int k = 0; k < 8; k++)
                reqs[i].a[k] = reqs[i].id * 8 + (uint64_t)k;
        }
        if ((r = teeif_front_push_requests(f, reqs, batch, &notify)) < 0)
            goto out;
        if ((r = notify_if(notify, fd)) < 0)
            goto out;
        while (got < batch) {
            r = teeif_front_pop_responses(f, rsps + got, batch - got);
            if (r < 0)
                goto out;
            if (r > 0) {
                got += (uint32_t)r;
                continue;
            }
            r = teeif_front_poll(f, spin_ns);
            if (r < 0)
                goto out;
            if (r == 0 && (r = sleep_on_channel(fd)) < 0)
                goto out;
        }
        for (uint32_t i = 0; i < batch; i++) {
            if (rsps[i].id != reqs[i].id || rsps[i].status != 0) {
                r = TEEIF_EMISMATCH;
                goto out;
            }
            for (int k = 0; k < 8; k++)
                if (rsps[i].a[k] != ~reqs[i].a[k]) {
                    r = TEEIF_EMISMATCH;
                    goto out;
                }
        }
        samples_ns[round] = teeif_now_ns() - t0;
    }
    r = 0;
out:
    free(reqs);
    free(rsps);
    return r;
}

int teeif_floor_back_run(struct teeif_back_ring *b, int fd, uint64_t entries, uint64_t spin_ns)
{
    struct teeif_request *reqs = calloc(b->nr_ents, sizeof(*reqs));
    struct teeif_response *rsps = calloc(b->nr_ents, sizeof(*rsps));
    uint64_t answered = 0;
    int r = 0, notify;

    if (!reqs || !rsps) {
        r = -ENOMEM;
        goto out;
    }
    while (answered < entries) {
        r = teeif_back_pop_requests(b, reqs, b->nr_ents);
        if (r < 0)
            goto out;
        if (r > 0) {
            uint32_t n = (uint32_t)r;
            for (uint32_t i = 0; i < n; i++) {
                rsps[i].id = reqs[i].id;
                rsps[i].status = 0;
                rsps[i].flags = 0;
                for (int k = 0; k < 8; k++)
                    rsps[i].a[k] = ~reqs[i].a[k];
            }
            if ((r = teeif_back_push_responses(b, rsps, n, &notify)) < 0)
                goto out;
            if ((r = notify_if(notify, fd)) < 0)
                goto out;
            answered += n;
            continue;
        }
        r = teeif_back_poll(b, spin_ns);
        if (r < 0)
            goto out;
        if (r == 0 && (r = sleep_on_channel(fd)) < 0)
            goto out;
    }
    r = 0;
out:
    free(reqs);
    free(rsps);
    return r;
}
