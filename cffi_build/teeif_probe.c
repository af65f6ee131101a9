/*
 * teeif_probe.c: what this machine charges for the steps the polled paths
 * are made of, measured in C so no interpreter is in the figure. A system
 * call (getppid), a sched_yield() with nobody else on the CPU, and a turn:
 * two threads of one process on one CPU handing a flag back and forth,
 * each waiting with the rings' own spin step. The platform's vCPU thread
 * and its SMC-gate thread share a CPU like that, and a polled fast call
 * under the stub domain hands the CPU from one to the other and back once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "teeif.h"
#include "teeif_private.h"

uint64_t teeif_probe_syscall_ns(uint32_t n)
{
    uint64_t t0 = teeif_now_ns();
    for (uint32_t i = 0; i < n; i++)
        syscall(SYS_getppid);   /* no libc cache in front of it */
    return n ? (teeif_now_ns() - t0) / n : 0;
}

uint64_t teeif_probe_yield_ns(uint32_t n)
{
    uint64_t t0 = teeif_now_ns();
    for (uint32_t i = 0; i < n; i++)
        sched_yield();
    return n ? (teeif_now_ns() - t0) / n : 0;
}

struct turn {
    _Atomic uint32_t owner;     /* 0: the caller's turn, 1: the peer's */
    uint32_t rounds;
};

static void *turn_peer(void *arg)
{
    struct turn *t = arg;
    unsigned spins = 0;

    for (uint32_t i = 0; i < t->rounds; i++) {
        while (atomic_load_explicit(&t->owner, memory_order_acquire) != 1)
            teeif_spin_step(&spins);
        atomic_store_explicit(&t->owner, 0, memory_order_release);
    }
    return NULL;
}

int teeif_probe_turn_run(uint32_t rounds, uint64_t *samples_ns)
{
    struct turn t = { .rounds = rounds };
    pthread_t peer;
    unsigned spins = 0;
    int r;

    /* the peer inherits this thread's affinity: the caller pins both */
    if ((r = pthread_create(&peer, NULL, turn_peer, &t)) != 0)
        return -r;
    for (uint32_t i = 0; i < rounds; i++) {
        uint64_t t0 = teeif_now_ns();
        atomic_store_explicit(&t.owner, 1, memory_order_release);
        while (atomic_load_explicit(&t.owner, memory_order_acquire) != 0)
            teeif_spin_step(&spins);
        samples_ns[i] = teeif_now_ns() - t0;
    }
    pthread_join(peer, NULL);
    return 0;
}
