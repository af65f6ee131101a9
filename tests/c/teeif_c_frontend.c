/*
 * teeif_c_frontend.c: a domain's OP-TEE frontend written against nothing but
 * Xen's public xen/io/ring.h (Debian libxen-dev) and the documented teeif
 * protocol (docs/protocol.md): it attaches the ring a running stubdom-teed
 * created for the domain, connects to its event channel and issues OP-TEE
 * fast calls as a trapping vCPU would. Built by tests/test_c_frontend.py
 * into its tmp_path; never part of the package.
 *
 *   teeif_c_frontend DOMDIR      DOMDIR = <runtime_dir>/dom<domid>
 *
 * Two rounds of the same five calls: round 1 one request at a time (one
 * vCPU, one trap outstanding), round 2 all five pushed in one batch from
 * alternating vCPUs 0 and 1. Every request carries junk in a1..a7, as a
 * guest's registers may. For each response it prints one line:
 *
 *   <round> <name> status=<int> a0=0x... a1=0x... ... a7=0x...
 *
 * then "done". Exit status 0; 1 on any protocol error (the reason on stderr):
 * a response id it did not ask for, rsp_prod past what it has outstanding,
 * end-of-file on the event channel (the daemon died), no answer in 30 s.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
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

_Static_assert(sizeof(struct teeif_request) == 80, "teeif_request is 80 bytes");
_Static_assert(sizeof(struct teeif_response) == 80, "teeif_response is 80 bytes");

#define PAGE_SIZE 4096
#define MAX_RING_PAGES 1024 /* docs/protocol.md: ring_pages 1..1024 */
#define WAIT_MS 30000       /* a silent daemon is an error, never a hang */

/* optee_os core/arch/arm/include/sm/optee_smc.h (and Linux
 * drivers/tee/optee/optee_smc.h): SMC32 fast calls. */
static const struct { const char *name; uint32_t fid; } calls[] = {
    { "CALLS_UID", 0xBF00FF01 },       /* OPTEE_SMC_CALLS_UID */
    { "CALLS_REVISION", 0xBF00FF03 },  /* OPTEE_SMC_CALLS_REVISION */
    { "GET_OS_REVISION", 0xB2000001 }, /* OPTEE_SMC_CALL_GET_OS_REVISION */
    { "CALLS_COUNT", 0xBF00FF00 },     /* OPTEE_SMC_CALLS_COUNT */
    { "UNKNOWN", 0xB2007777 },         /* fast, SMC32, Trusted OS: no such function */
};
#define NR_CALLS (sizeof(calls) / sizeof(calls[0]))

static void die(const char *what)
{
    fprintf(stderr, "teeif_c_frontend: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(1);
}

/* Event channel: one byte per notification; EAGAIN means one is pending. */
static void notify(int fd)
{
    char one = 1;
    if (send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno != EAGAIN)
        die("notify: send failed");
}

/* Block until notified, then drain every pending notification (they
 * coalesce). End-of-file with nothing before it: the daemon is gone. */
static void sleep_on(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    char buf;
    ssize_t r;
    int n = 0, rc;

    while ((rc = poll(&p, 1, WAIT_MS)) < 0)
        if (errno != EINTR)
            die("poll failed");
    if (rc == 0) {
        errno = 0;
        die("no response within 30 s");
    }
    while ((r = recv(fd, &buf, 1, MSG_DONTWAIT)) > 0)
        n++;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        die("recv on the event channel failed");
    if (r == 0 && n == 0) {
        errno = 0;
        die("end-of-file on the event channel: the daemon closed it");
    }
}

static uint64_t junk(uint64_t id, int k)
{
    return (0x9E3779B97F4A7C15ull * (id + 1)) ^ ((uint64_t)k << 56);
}

static void push(teeif_front_ring_t *fr, int ev, const uint64_t *ids, const uint32_t *vcpus,
                 const size_t *which, size_t n)
{
    int do_notify;
    for (size_t i = 0; i < n; i++) {
        struct teeif_request *req;
        if (RING_FULL(fr)) {
            errno = 0;
            die("ring full");
        }
        req = RING_GET_REQUEST(fr, fr->req_prod_pvt);
        req->id = ids[i];
        req->vcpu = vcpus[i];
        req->flags = 0;
        req->a[0] = calls[which[i]].fid;
        for (int k = 1; k < 8; k++)
            req->a[k] = junk(ids[i], k);
        fr->req_prod_pvt++;
    }
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(fr, do_notify);
    if (do_notify)
        notify(ev);
}

/* Wait for n responses per io/ring.h and print them in arrival order. */
static void collect(teeif_front_ring_t *fr, int ev, int round, const uint64_t *ids,
                    const size_t *which, size_t n)
{
    size_t got = 0;
    while (got < n) {
        int more;
        while (RING_HAS_UNCONSUMED_RESPONSES(fr)) {
            struct teeif_response rsp;
            size_t i;
            RING_IDX prod = fr->sring->rsp_prod;
            /* a response needs a request: never more than we have outstanding */
            if (RING_RESPONSE_PROD_OVERFLOW(fr, prod) || prod - fr->rsp_cons > n - got) {
                errno = 0;
                die("rsp_prod ran past the requests outstanding");
            }
            xen_rmb(); /* the entries up to rsp_prod, after rsp_prod */
            RING_COPY_RESPONSE(fr, fr->rsp_cons, &rsp);
            fr->rsp_cons++;
            for (i = 0; i < n && ids[i] != rsp.id; i++)
                ;
            if (i == n) {
                errno = 0;
                die("a response to an id we never sent");
            }
            printf("%d %s status=%" PRId32 " flags=%" PRIu32, round, calls[which[i]].name, rsp.status,
                   rsp.flags);
            for (int k = 0; k < 8; k++)
                printf(" a%d=0x%" PRIx64, k, rsp.a[k]);
            printf("\n");
            got++;
        }
        if (got == n)
            break;
        RING_FINAL_CHECK_FOR_RESPONSES(fr, more);
        if (!more)
            sleep_on(ev);
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    teeif_front_ring_t fr;
    teeif_sring_t *s;
    uint64_t next_id = 1;
    int fd, ev;

    if (argc != 2) {
        fprintf(stderr, "usage: %s <runtime_dir>/dom<domid>\n", argv[0]);
        return 2;
    }
    /* Work from inside the domain's directory: the socket name stays short. */
    if (chdir(argv[1]) < 0)
        die("cannot enter the domain directory");
    fd = open("ring", O_RDWR);
    if (fd < 0 || fstat(fd, &st) < 0)
        die("cannot open ring");
    if (st.st_size % PAGE_SIZE || st.st_size < PAGE_SIZE || st.st_size > MAX_RING_PAGES * PAGE_SIZE) {
        errno = 0;
        die("ring is not a whole number of pages in 1..1024");
    }
    s = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s == MAP_FAILED)
        die("mmap of ring failed");
    close(fd);

    ev = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    strcpy(sa.sun_path, "evtchn");
    if (ev < 0 || connect(ev, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("cannot connect to evtchn");

    /* A fresh ring: nothing outstanding, both ends at req_prod. */
    if (s->req_prod != s->rsp_prod) {
        errno = 0;
        die("the ring has requests in flight: not a fresh domain");
    }
    FRONT_RING_ATTACH(&fr, s, s->req_prod, (size_t)st.st_size);
    printf("ring_pages=%lld nr_ents=%u\n", (long long)(st.st_size / PAGE_SIZE), RING_SIZE(&fr));

    /* Round 1: one vCPU, one trap at a time. */
    for (size_t c = 0; c < NR_CALLS; c++) {
        uint64_t id = next_id++;
        uint32_t vcpu = 0;
        push(&fr, ev, &id, &vcpu, &c, 1);
        collect(&fr, ev, 1, &id, &c, 1);
    }
    /* Round 2: all five at once, from two vCPUs, one push. */
    {
        uint64_t ids[NR_CALLS];
        uint32_t vcpus[NR_CALLS];
        size_t which[NR_CALLS];
        for (size_t c = 0; c < NR_CALLS; c++) {
            ids[c] = next_id++;
            vcpus[c] = (uint32_t)(c % 2);
            which[c] = c;
        }
        push(&fr, ev, ids, vcpus, which, NR_CALLS);
        collect(&fr, ev, 2, ids, which, NR_CALLS);
    }
    printf("done\n");
    fflush(stdout);
    close(ev);
    munmap(s, (size_t)st.st_size);
    return 0;
}
