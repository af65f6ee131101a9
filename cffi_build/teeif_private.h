/*
 * teeif_private.h: helpers shared by the teeif C sources; not part of the
 * cffi interface (teeif.h is).
 */
#ifndef TEEIF_PRIVATE_H
#define TEEIF_PRIVATE_H

#include <sched.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

/* Tell the CPU we are spinning (x86 PAUSE, Arm YIELD) so a polling loop does
 * not starve the sibling hardware thread or flood the memory system. */
static inline void teeif_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/* One step of a polling loop: relax, and every TEEIF_SPINS_PER_YIELD steps
 * give the CPU away. Two processes on two CPUs never notice the yield (it
 * returns at once: the polling floor's round trip is the same at 1 as at
 * 32); two threads the scheduler put on one CPU (the platform's vCPU and
 * SMC-gate threads) hand over within one step instead of 32 (a polled fast
 * call: 14.8 -> 13.4 us p50 in --quick runs, docs/performance.md). */
#define TEEIF_SPINS_PER_YIELD 1
static inline void teeif_spin_step(unsigned *spins)
{
    teeif_cpu_relax();
    if (++*spins % TEEIF_SPINS_PER_YIELD == 0)
        sched_yield();
}

/*
 * Guarded access to a mapped ring (teeif_guard.c): a SIGBUS raised by an
 * access to [lo, hi) while the guard is this thread's innermost one resumes
 * at the guard's sigsetjmp() instead of killing the process.
 */
struct teeif_guard {
    sigjmp_buf env;                 /* where a fault resumes (signal mask not saved) */
    uintptr_t lo, hi;               /* the mapping this guard covers */
    volatile uintptr_t fault;       /* written by the handler: the faulting address */
    struct teeif_guard *prev;       /* the guard this one nests in, on this thread */
};

/* Install the SIGBUS handler (once per process; before the first mapping). */
void teeif_guard_install(void);
/* Push g (its env already set by sigsetjmp) / pop it after the last access. */
void teeif_guard_enter(struct teeif_guard *g, const void *base, size_t len);
void teeif_guard_leave(struct teeif_guard *g);
/* After siglongjmp: pop g; the fault's offset in the mapping, or TEEIF_FAULT_UNKNOWN. */
uint32_t teeif_guard_caught(struct teeif_guard *g);

/*
 * The body of a function that touches the ring `end` (a front or back ring)
 * maps: return `expr`, evaluated under a guard. A SIGBUS inside it marks the
 * end truncated (every later call fails at once, without touching the
 * mapping: a ring that shrank once is never trusted again, even if it grows
 * back) and returns TEEIF_ETRUNC. sigsetjmp() comes first, so the guard is
 * never visible to the handler before its env is set; `end` is a parameter
 * the body does not change, so it is still valid after siglongjmp.
 */
#define TEEIF_GUARDED(end, expr)                                                         \
    do {                                                                                 \
        struct teeif_guard guard_;                                                       \
        int rc_;                                                                         \
        if ((end)->truncated)                                                            \
            return TEEIF_ETRUNC;                                                         \
        if (sigsetjmp(guard_.env, 0)) {                                                  \
            (end)->fault_off = teeif_guard_caught(&guard_);                              \
            (end)->truncated = 1;                                                        \
            return TEEIF_ETRUNC;                                                         \
        }                                                                                \
        teeif_guard_enter(&guard_, (end)->sring, (size_t)(end)->ring_pages * TEEIF_PAGE_SIZE); \
        rc_ = (expr);                                                                    \
        teeif_guard_leave(&guard_);                                                      \
        return rc_;                                                                      \
    } while (0)

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t teeif_now_ns(void);

#endif /* TEEIF_PRIVATE_H */
