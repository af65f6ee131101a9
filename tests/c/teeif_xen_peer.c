/*
 * teeif_xen_peer.c: one end of a teeif ring written only against Xen's own
 * public header, xen/io/ring.h (Debian libxen-dev), to prove that our ring
 * (ring._ring) is that header's ring. Built by tests/test_ring_xen_compat.py
 * into its tmp_path; never part of the package.
 *
 *   teeif_xen_peer front DOMDIR COUNT   connect to DOMDIR/evtchn, attach DOMDIR/ring
 *   teeif_xen_peer back  DOMDIR COUNT   listen on DOMDIR/evtchn, attach DOMDIR/ring
 *
 * DOMDIR is <runtime_dir>/dom<domid> (docs/protocol.md); the peer works from
 * inside it, so the socket name stays short whatever the directory. The ring
 * file must exist (the other side or the test created it, possibly
 * with indices near 2^32). Each entry e = 0, 1, 2, ... is a function of e
 * (see req_a/rsp_a below; the Python side computes the same), and every
 * field of every entry is checked. Exit status 0 when COUNT entries made the
 * round trip; 1 on any mismatch or protocol error; the reason on stderr.
 * The back prints "ready" on stdout once it listens.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

/* What io/ring.h asks of its includer: the modern interface, and barriers. */
#define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__
#define xen_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#include <xen/io/ring.h>

/* DESIGN.md "Wire protocol: teeif". */
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

#define GOLDEN 0x9E3779B97F4A7C15ull
#define RSP_MASK 0xA5A5A5A5A5A5A5A5ull

static uint64_t req_a(uint64_t e, int k) { return e * GOLDEN + (uint64_t)k; }
static uint32_t req_vcpu(uint64_t e) { return (uint32_t)(e % 7); }
static uint64_t rsp_a(uint64_t e, int k) { return req_a(e, k) ^ RSP_MASK ^ (uint64_t)k; }
static int32_t rsp_status(uint64_t e) { return e % 5 == 0 ? -22 : 0; }  /* -EINVAL */

static void die(const char *what, uint64_t e)
{
    fprintf(stderr, "teeif_xen_peer: %s (entry %llu)\n", what, (unsigned long long)e);
    exit(1);
}

static void notify(int fd)
{
    char one = 1;
    if (send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno != EAGAIN)
        die("notify: send failed", 0);
}

/* Sleep until notified and drain; exit on end-of-file (the peer died). */
static void sleep_on(int fd, uint64_t e)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    char buf;
    ssize_t r;
    int n = 0;
    while (poll(&p, 1, -1) < 0)
        if (errno != EINTR)
            die("poll failed", e);
    while ((r = recv(fd, &buf, 1, MSG_DONTWAIT)) > 0)
        n++;
    /* A notification sent just before the peer closed still counts; the
     * end-of-file behind it is seen again on the next sleep. */
    if (r == 0 && n == 0)
        die("end-of-file on the event channel", e);
}

static struct sockaddr_un addr_of(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path))
        die("socket path too long", 0);
    strcpy(sa.sun_path, path);
    return sa;
}

static teeif_sring_t *map_ring(const char *path, size_t *size)
{
    struct stat st;
    void *p;
    int fd = open(path, O_RDWR);
    if (fd < 0 || fstat(fd, &st) < 0)
        die("cannot open ring file", 0);
    *size = (size_t)st.st_size;
    p = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap failed", 0);
    close(fd);
    return p;
}

static int run_front(const char *ring, const char *evtchn, uint64_t count)
{
    struct sockaddr_un sa = addr_of(evtchn);
    teeif_front_ring_t fr;
    size_t size;
    teeif_sring_t *s = map_ring(ring, &size);
    uint64_t sent = 0, got = 0;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0), more;

    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("cannot connect to the event channel", 0);
    /* A fresh ring: produced and consumed both stand at req_prod. */
    FRONT_RING_ATTACH(&fr, s, s->req_prod, size);
    while (got < count) {
        int progress = 0, do_notify;
        while (sent < count && !RING_FULL(&fr)) {
            struct teeif_request *req = RING_GET_REQUEST(&fr, fr.req_prod_pvt);
            req->id = sent;
            req->vcpu = req_vcpu(sent);
            req->flags = 0;
            for (int k = 0; k < 8; k++)
                req->a[k] = req_a(sent, k);
            fr.req_prod_pvt++;
            sent++;
            progress = 1;
        }
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&fr, do_notify);
        if (do_notify)
            notify(fd);
        while (RING_HAS_UNCONSUMED_RESPONSES(&fr)) {
            struct teeif_response rsp;
            if (RING_RESPONSE_PROD_OVERFLOW(&fr, s->rsp_prod))
                die("backend ran rsp_prod past the ring", got);
            xen_rmb();
            RING_COPY_RESPONSE(&fr, fr.rsp_cons, &rsp);
            fr.rsp_cons++;
            if (rsp.id != got || rsp.status != rsp_status(got) || rsp.flags != 0)
                die("response header mismatch", got);
            for (int k = 0; k < 8; k++)
                if (rsp.a[k] != rsp_a(got, k))
                    die("response register mismatch", got);
            got++;
            progress = 1;
        }
        if (progress)
            continue;
        RING_FINAL_CHECK_FOR_RESPONSES(&fr, more);
        if (!more)
            sleep_on(fd, got);
    }
    close(fd);
    munmap(s, size);
    return 0;
}

static int run_back(const char *ring, const char *evtchn, uint64_t count)
{
    struct sockaddr_un sa = addr_of(evtchn);
    teeif_back_ring_t br;
    size_t size;
    teeif_sring_t *s = map_ring(ring, &size);
    uint64_t seen = 0;
    int lfd = socket(AF_UNIX, SOCK_SEQPACKET, 0), fd, more;

    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 1) < 0)
        die("cannot listen on the event channel", 0);
    printf("ready\n");
    fflush(stdout);
    fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        die("accept failed", 0);
    close(lfd);
    /* Resume where responses stand, as a backend re-attaching would. */
    BACK_RING_ATTACH(&br, s, s->rsp_prod, size);
    while (seen < count) {
        RING_IDX rp = s->req_prod;
        int do_notify;
        xen_rmb();  /* requests up to rp are visible once rp is */
        if (RING_REQUEST_PROD_OVERFLOW(&br, rp))
            die("frontend ran req_prod more than a ring ahead", seen);
        if (br.req_cons == rp) {
            RING_FINAL_CHECK_FOR_REQUESTS(&br, more);
            if (!more)
                sleep_on(fd, seen);
            continue;
        }
        while (br.req_cons != rp && !RING_REQUEST_CONS_OVERFLOW(&br, br.req_cons)) {
            struct teeif_request req;
            struct teeif_response *rsp;
            RING_COPY_REQUEST(&br, br.req_cons, &req);
            br.req_cons++;
            if (req.id != seen || req.vcpu != req_vcpu(seen) || req.flags != 0)
                die("request header mismatch", seen);
            for (int k = 0; k < 8; k++)
                if (req.a[k] != req_a(seen, k))
                    die("request register mismatch", seen);
            rsp = RING_GET_RESPONSE(&br, br.rsp_prod_pvt);
            rsp->id = req.id;
            rsp->status = rsp_status(seen);
            rsp->flags = 0;
            for (int k = 0; k < 8; k++)
                rsp->a[k] = rsp_a(seen, k);
            br.rsp_prod_pvt++;
            seen++;
        }
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&br, do_notify);
        if (do_notify)
            notify(fd);
    }
    close(fd);
    unlink(evtchn);
    munmap(s, size);
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t count;
    if (argc != 4) {
        fprintf(stderr, "usage: %s front|back DOMDIR COUNT\n", argv[0]);
        return 2;
    }
    count = strtoull(argv[3], NULL, 0);
    if (chdir(argv[2]) < 0)
        die("cannot enter DOMDIR", 0);
    /* docs/protocol.md: the ring file and the event channel socket. */
    if (!strcmp(argv[1], "front"))
        return run_front("ring", "evtchn", count);
    if (!strcmp(argv[1], "back"))
        return run_back("ring", "evtchn", count);
    fprintf(stderr, "role must be front or back, not %s\n", argv[1]);
    return 2;
}
