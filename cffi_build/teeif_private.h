/*
 * teeif_private.h: helpers shared by the teeif C sources; not part of the
 * cffi interface (teeif.h is).
 */
#ifndef TEEIF_PRIVATE_H
#define TEEIF_PRIVATE_H

#include <sched.h>
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
 * returns at once); two that the scheduler put on one CPU would otherwise
 * each burn its whole window before the other could run. */
#define TEEIF_SPINS_PER_YIELD 32
static inline void teeif_spin_step(unsigned *spins)
{
    teeif_cpu_relax();
    if (++*spins % TEEIF_SPINS_PER_YIELD == 0)
        sched_yield();
}

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t teeif_now_ns(void);

#endif /* TEEIF_PRIVATE_H */
