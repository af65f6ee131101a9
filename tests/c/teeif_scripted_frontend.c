/*
 * teeif_scripted_frontend.c: a domain's OP-TEE frontend written only against
 * Xen's public xen/io/ring.h (Debian libxen-dev) and docs/protocol.md, driven
 * one step at a time from stdin so that a test can place a kill, a restart or
 * a truncation exactly where it wants between the steps. Built by the tests
 * that use it (tests/test_frontends_*.py) into their tmp_path; never part of
 * the package.
 *
 *   teeif_scripted_frontend DOMDIR WAIT_MS TAG
 *
 * DOMDIR is <runtime_dir>/dom<domid>; WAIT_MS bounds every wait on the event
 * channel (a liveness bound: a frontend nobody wakes exits 3 instead of
 * hanging); TAG goes into the high half of every request id, so that one
 * instance knows the responses meant for a predecessor it replaced.
 *
 * Commands, one per line; each answers with one line on stdout:
 *
 *   attach            map DOMDIR/ring, resume at the shared indices
 *                     ("Restarts": req_prod_pvt = req_prod, rsp_cons = rsp_prod)
 *                       -> attached nr_ents=<n> req_prod=<i> rsp_prod=<i>
 *   connect           connect to DOMDIR/evtchn            -> connected
 *   burst N FID A0    push N requests for function FID (vCPUs 0 and 1 in turn)
 *                     in one push, notify if the ring says so   -> pushed <k>
 *   collect           wait per io/ring.h until every request of ours has its
 *                     response (a0 must be A0, status 0); responses to ids
 *                     not ours are dropped. Before each sleep: "sleeping".
 *                       -> answered <k> dropped <d>
 *   auto N FID A0     burst then collect, forever ("pushed k", "answered k ...")
 *   truncate SIZE     ftruncate DOMDIR/ring to SIZE bytes   -> truncated
 *   scribble          write req_prod two rings ahead (impossible) -> scribbled
 *   notify            one notification      -> notified (notified peer-gone: the
 *                     backend had closed its end already)
 *   wait_eof          sleep on the channel until end-of-file -> eof
 *   exit              exit 0
 *
 * Exit status 0 on "exit" or end of input; 1 on a protocol error or a bad
 * response (the reason on stderr); 3 when a wait ran past WAIT_MS (never
 * woken); 4 on end-of-file on the event channel while waiting for responses.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* What io/ring.h asks of its includer: the modern interface, and barriers
 * (C11 fences in user space, docs/protocol.md). */
#define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__
#define xen_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#include <xen/io/ring.h>

/* docs/protocol.md, "Layout of ring": 80 bytes each. */
struct teeif_request {
    uint64_t id;
    uint32_t vcpu;
    uint32_t flags;
    uint64_t a[8];
};
struct teeif_response {
    uint64_t id;
    int32_t status;
    uint32_t flags;
    uint64_t a[8];
};
DEFINE_RING_TYPES(teeif, struct teeif_request, struct teeif_response);

#define PAGE_SIZE 4096
#define MAX_RING_PAGES 1024 /* docs/protocol.md: ring_pages 1..1024 */
#define MAX_PENDING 32768   /* nr_ents of the largest ring */

static int wait_ms;
static uint64_t tag;
static teeif_sring_t *sring;
static int ring_gone; /* we truncated it: touching it would be SIGBUS */
static size_t ring_size;
static teeif_front_ring_t fr;
static int ev = -1;
static uint64_t next_seq, bursts, answered_bursts;
static uint64_t pending[MAX_PENDING]; /* ids of ours still awaiting a response */
static uint32_t npending;
static uint64_t want_a0;

static void fail(int code, const char *what)
{
    fprintf(stderr, "teeif_scripted_frontend[%" PRIu64 "]: %s%s%s", tag, what, errno ? ": " : "",
            errno ? strerror(errno) : "");
    if (sring && !ring_gone)
        fprintf(stderr, " (req_prod=%u rsp_prod=%u rsp_event=%u req_prod_pvt=%u rsp_cons=%u)",
                sring->req_prod, sring->rsp_prod, sring->rsp_event, fr.req_prod_pvt, fr.rsp_cons);
    fprintf(stderr, "\n");
    exit(code);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout); /* the test reads each line as it comes */
}

/* Event channel: one byte per notification; EAGAIN means one is pending.
 * Returns 0, or -1 when the backend has already closed its end (EPIPE,
 * ECONNRESET): the notification has nobody to reach. */
static int notify(void)
{
    char one = 1;
    if (ev >= 0 && send(ev, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno != EAGAIN) {
        if (errno == EPIPE || errno == ECONNRESET)
            return -1;
        fail(1, "notify: send failed");
    }
    return 0;
}

/* Block until notified (bounded), then drain every pending notification.
 * Returns 0, or -1 on end-of-file with nothing before it. */
static int sleep_on(void)
{
    struct pollfd p = { .fd = ev, .events = POLLIN };
    char buf;
    ssize_t r;
    int n = 0, rc;

    if (ev < 0) {
        errno = 0;
        fail(1, "waiting with no event channel");
    }
    while ((rc = poll(&p, 1, wait_ms)) < 0)
        if (errno != EINTR)
            fail(1, "poll failed");
    if (rc == 0) {
        errno = 0;
        fail(3, "never woken: no notification within the wait bound");
    }
    while ((r = recv(ev, &buf, 1, MSG_DONTWAIT)) > 0)
        n++;
    /* docs/protocol.md: ECONNRESET (the peer closed with our notifications
     * unread) is end-of-file too */
    if (r < 0 && errno == ECONNRESET)
        r = 0;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        fail(1, "recv on the event channel failed");
    return (r == 0 && n == 0) ? -1 : 0;
}

static void cmd_attach(void)
{
    struct stat st;
    void *p;
    int fd = open("ring", O_RDWR);
    if (fd < 0 || fstat(fd, &st) < 0)
        fail(1, "cannot open ring");
    if (st.st_size % PAGE_SIZE || st.st_size < PAGE_SIZE || st.st_size > MAX_RING_PAGES * PAGE_SIZE) {
        errno = 0;
        fail(1, "ring is not a whole number of pages in 1..1024");
    }
    ring_size = (size_t)st.st_size;
    p = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        fail(1, "mmap of ring failed");
    close(fd);
    sring = p;
    /* docs/protocol.md "Restarts": produce from req_prod on; the responses
     * to a predecessor's requests still come, from rsp_prod on, and are
     * dropped by id. FRONT_RING_ATTACH sets both private indices to one
     * value; rsp_cons is then moved to rsp_prod (a field of ring.h's struct). */
    FRONT_RING_ATTACH(&fr, sring, sring->req_prod, ring_size);
    fr.rsp_cons = sring->rsp_prod;
    if (fr.req_prod_pvt - fr.rsp_cons > RING_SIZE(&fr)) {
        errno = 0;
        fail(1, "the shared indices are impossible");
    }
    say("attached nr_ents=%u req_prod=%u rsp_prod=%u", RING_SIZE(&fr), fr.req_prod_pvt, fr.rsp_cons);
}

static void cmd_connect(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    ev = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    strcpy(sa.sun_path, "evtchn");
    if (ev < 0 || connect(ev, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        fail(1, "cannot connect to evtchn");
    say("connected");
}

static void cmd_burst(uint32_t n, uint32_t fid, uint64_t a0)
{
    int do_notify;
    if (npending || n == 0 || n > RING_FREE_REQUESTS(&fr)) {
        errno = 0;
        fail(1, "burst: responses still pending, or no room on the ring");
    }
    for (uint32_t i = 0; i < n; i++) {
        struct teeif_request *req = RING_GET_REQUEST(&fr, fr.req_prod_pvt);
        req->id = tag << 32 | ++next_seq;
        req->vcpu = i % 2;
        req->flags = 0;
        req->a[0] = fid;
        for (int k = 1; k < 8; k++)
            req->a[k] = 0;
        pending[npending++] = req->id;
        fr.req_prod_pvt++;
    }
    want_a0 = a0;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&fr, do_notify);
    if (do_notify && notify() < 0)
        fail(1, "notify: the backend closed the channel");
    say("pushed %" PRIu64, ++bursts);
}

static void cmd_collect(void)
{
    uint64_t dropped = 0;
    while (npending) {
        int more;
        while (RING_HAS_UNCONSUMED_RESPONSES(&fr)) {
            struct teeif_response rsp;
            RING_IDX prod = sring->rsp_prod;
            uint32_t i;
            /* a response needs a request: never past what was pushed */
            if (prod - fr.rsp_cons > fr.req_prod_pvt - fr.rsp_cons) {
                errno = 0;
                fail(1, "rsp_prod ran past the requests pushed");
            }
            xen_rmb(); /* the entries up to rsp_prod, after rsp_prod */
            RING_COPY_RESPONSE(&fr, fr.rsp_cons, &rsp);
            fr.rsp_cons++;
            for (i = 0; i < npending && pending[i] != rsp.id; i++)
                ;
            if (i == npending) { /* a predecessor's: it is gone */
                dropped++;
                continue;
            }
            if (rsp.status != 0 || rsp.a[0] != want_a0) {
                errno = 0;
                fail(1, "a response with a bad status or a0");
            }
            pending[i] = pending[--npending];
        }
        if (!npending)
            break;
        RING_FINAL_CHECK_FOR_RESPONSES(&fr, more);
        if (!more) {
            say("sleeping");
            if (sleep_on() < 0) {
                errno = 0;
                fail(4, "end-of-file on the event channel while waiting for responses");
            }
        }
    }
    say("answered %" PRIu64 " dropped %" PRIu64, ++answered_bursts, dropped);
}

int main(int argc, char **argv)
{
    char line[256];

    if (argc != 4) {
        fprintf(stderr, "usage: %s <runtime_dir>/dom<domid> WAIT_MS TAG\n", argv[0]);
        return 2;
    }
    wait_ms = atoi(argv[2]);
    tag = strtoull(argv[3], NULL, 0);
    /* Work from inside the domain's directory: the socket name stays short. */
    if (chdir(argv[1]) < 0)
        fail(1, "cannot enter the domain directory");
    while (fgets(line, sizeof(line), stdin)) {
        unsigned n, fid;
        unsigned long long a0, size;
        if (!strcmp(line, "attach\n"))
            cmd_attach();
        else if (!strcmp(line, "connect\n"))
            cmd_connect();
        else if (sscanf(line, "burst %u %i %lli", &n, &fid, &a0) == 3)
            cmd_burst(n, fid, a0);
        else if (!strcmp(line, "collect\n"))
            cmd_collect();
        else if (sscanf(line, "auto %u %i %lli", &n, &fid, &a0) == 3)
            for (;;) {
                cmd_burst(n, fid, a0);
                cmd_collect();
            }
        else if (sscanf(line, "truncate %llu", &size) == 1) {
            int fd = open("ring", O_RDWR);
            if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
                fail(1, "cannot truncate ring");
            close(fd);
            ring_gone = 1;
            say("truncated");
        } else if (!strcmp(line, "scribble\n")) {
            /* RING_REQUEST_PROD_OVERFLOW for any backend */
            sring->req_prod = fr.req_prod_pvt + 2 * RING_SIZE(&fr);
            say("scribbled");
        } else if (!strcmp(line, "notify\n")) {
            /* the backend may have closed the channel on its own already
             * (it found the ring broken while watching it) */
            say(notify() == 0 ? "notified" : "notified peer-gone");
        } else if (!strcmp(line, "wait_eof\n")) {
            while (sleep_on() == 0)
                ;
            say("eof");
        } else if (!strcmp(line, "exit\n"))
            return 0;
        else {
            errno = 0;
            fail(2, "unknown command");
        }
    }
    return 0;
}
