/*
 * teeif_private.h: helpers shared by the teeif C sources; not part of the
 * cffi interface (teeif.h is).
 */
#ifndef TEEIF_PRIVATE_H
#define TEEIF_PRIVATE_H

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

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t teeif_now_ns(void);

#endif /* TEEIF_PRIVATE_H */
