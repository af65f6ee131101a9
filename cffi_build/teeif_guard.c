/*
 * teeif_guard.c: a ring mapping the peer shrank must fail that ring, not the
 * process (docs/protocol.md, "A peer that truncates the ring file").
 *
 * Xen's granted pages cannot shrink under the domain that mapped them; our
 * ring is a file both ends map MAP_SHARED, and any process that can open it
 * for writing can ftruncate() it. Touching a mapped page that now lies past
 * the end of the file raises SIGBUS (BUS_ADRERR), whose default action kills
 * the whole process: the daemon with every domain it serves, or the platform
 * (the hypervisor) with every guest.
 *
 * Every access to a mapped ring is made by this library's C code, inside a
 * guard (TEEIF_GUARDED in teeif_private.h): sigsetjmp() records where to
 * resume, then the guard is pushed on this thread's guard stack. The SIGBUS
 * handler installed here sends a fault inside the top guard's mapping back to
 * that sigsetjmp() with siglongjmp(); the ring end is marked truncated and the
 * call returns TEEIF_ETRUNC (RingTruncated in Python), as it returns
 * TEEIF_ECORRUPT for an impossible index. The owner disconnects that peer;
 * nothing else in the process notices.
 *
 * A SIGBUS that is not ours (no guard on this thread, or an address outside
 * the guarded mapping) goes to the handler that was installed before ours —
 * Python's faulthandler under pytest, or the default action, which kills the
 * process with SIGBUS as it would have without us.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "teeif.h"
#include "teeif_private.h"

/*
 * The innermost active guard of this thread (guards nest: each records the
 * one it covers). Per thread, as the accesses are: the handler runs on the
 * thread that faulted. initial-exec TLS is a plain offset from the thread
 * pointer, so reading it in the handler cannot allocate (the default model
 * in a dlopen()ed module may call __tls_get_addr, which is not
 * async-signal-safe on a thread's first access).
 */
static __thread struct teeif_guard *guard_top __attribute__((tls_model("initial-exec")));

/*
 * The SIGBUS action found when ours was installed: where foreign faults go.
 * Process-wide because a signal disposition is; written once, under
 * pthread_once, before our handler can run, and only read afterwards.
 */
static struct sigaction prev_action;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

/* Pass a fault that is not ours on, as if our handler had never been there. */
static void chain(int sig, siginfo_t *si, void *uctx)
{
    if (prev_action.sa_flags & SA_SIGINFO) {
        prev_action.sa_sigaction(sig, si, uctx);
        return;
    }
    if (prev_action.sa_handler != SIG_DFL && prev_action.sa_handler != SIG_IGN) {
        prev_action.sa_handler(sig);
        return;
    }
    /*
     * The default action (the kernel forces it on an ignored synchronous
     * fault too): restore it and let the signal happen again. A fault
     * re-executes the instruction when we return and now kills the process;
     * a signal someone sent is sent again (SA_NODEFER: not blocked here).
     */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    if (si->si_code <= 0)
        raise(sig);
}

/*
 * Ours: a fault the kernel raised (si_code > 0) at an address inside the top
 * guard's mapping; or a SIGBUS this process raised itself (SI_TKILL from our
 * pid) while a guard is active: a handler installed in front of ours after
 * we were (faulthandler.enable() called late) reports the fault, then passes
 * it on with raise(), which carries no address.
 */
static int is_ours(const struct teeif_guard *g, const siginfo_t *si)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    if (si->si_code > 0)
        return a >= g->lo && a < g->hi;
    return si->si_code == SI_TKILL && si->si_pid == getpid();
}

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
    struct teeif_guard *g = guard_top;
    sigset_t bus;

    if (g == NULL || !is_ours(g, si)) {
        chain(sig, si, uctx);
        return;
    }
    g->fault = si->si_code > 0 ? (uintptr_t)si->si_addr : 0;
    /*
     * sigsetjmp(env, 0) saved no signal mask (saving one costs a system call
     * per guarded access). Our action has SA_NODEFER, so SIGBUS is not blocked
     * in here; but a handler in front of ours may have run without it: make
     * sure SIGBUS is deliverable again once we are back, or the next fault
     * on this thread would find it blocked and the kernel would kill us.
     */
    sigemptyset(&bus);
    sigaddset(&bus, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &bus, NULL);
    siglongjmp(g->env, 1);
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;  /* SA_NODEFER: see on_sigbus */
    sigaction(SIGBUS, &sa, &prev_action);
}

void teeif_guard_install(void)
{
    /*
     * Once per process, never again: re-installing over a handler installed
     * after ours would make each the other's predecessor, and a foreign
     * fault would bounce between the two.
     */
    pthread_once(&install_once, install);
}

void teeif_guard_enter(struct teeif_guard *g, const void *base, size_t len)
{
    g->lo = (uintptr_t)base;
    g->hi = (uintptr_t)base + len;
    g->fault = 0;
    g->prev = guard_top;
    guard_top = g;
    /* The compiler must not move an access to the mapping above this point:
     * only from here on does the handler know where to send its fault. */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void teeif_guard_leave(struct teeif_guard *g)
{
    /* ... nor below this one. */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    guard_top = g->prev;
}

uint32_t teeif_guard_caught(struct teeif_guard *g)
{
    /* Back from siglongjmp: this guard is over; report where the fault was. */
    guard_top = g->prev;
    if (g->fault < g->lo || g->fault >= g->hi)
        return TEEIF_FAULT_UNKNOWN;
    return (uint32_t)(g->fault - g->lo);
}
