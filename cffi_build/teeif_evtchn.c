/*
 * teeif_evtchn.c: the event channel, modelled on sockets. One connected pair
 * of AF_UNIX SOCK_SEQPACKET sockets per domain; a notification is a one-byte
 * message. Like Xen's per-port pending bit, notifications coalesce: the
 * receiver drains everything on wake-up, and a sender that finds the socket
 * buffer full knows one is already pending. End-of-file is the peer's death.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include <time.h>

#include "teeif.h"

int teeif_evtchn_notify(int fd)
{
    static const char one = 1;
    for (;;) {
        /* MSG_NOSIGNAL: a dead peer is EPIPE here, never SIGPIPE. */
        if (send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1)
            return 1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;   /* the peer has notifications pending already */
        if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
            return TEEIF_EPEER;
        return -errno;
    }
}

int teeif_evtchn_drain(int fd)
{
    char byte;
    int n = 0;
    for (;;) {
        /* A one-byte buffer: a longer message is truncated, still one notification. */
        ssize_t r = recv(fd, &byte, 1, MSG_DONTWAIT);
        if (r > 0) {
            if (n < INT32_MAX)
                n++;
            continue;
        }
        if (r == 0)     /* EOF is sticky: report what came before it first */
            return n ? n : TEEIF_EPEER;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return n;
        if (errno == ECONNRESET)
            return TEEIF_EPEER;
        return -errno;
    }
}

int teeif_evtchn_wait(int fd, int64_t timeout_ns)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    struct timespec ts, *tsp = NULL;
    int r;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tsp = &ts;
    }
    /* EINTR goes back to the caller, which may have signals to handle. */
    r = ppoll(&p, 1, tsp, NULL);
    if (r < 0)
        return -errno;
    return r > 0;   /* POLLIN, POLLHUP and POLLERR all mean "drain now" */
}
