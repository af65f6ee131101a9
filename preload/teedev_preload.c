/*
 * teedev_preload.c - libstubdom_teedev.so, the LD_PRELOAD library that gives
 * an unmodified program the Linux TEE device interface of a simulated guest
 * (/dev/tee<N>, /dev/teepriv<N> of `stubdom-teed guest-dev`).
 *
 * The guest kernel runs in the guest-dev process; this library turns the
 * program's system calls on the guest's device nodes into requests on the
 * device socket ($STUBDOM_TEEDEV, protocol in teedev_wire.h):
 *
 *   open/openat    on /dev/tee<N>, /dev/teepriv<N>: a connection to the device
 *                  socket; that socket is the file descriptor from then on, so
 *                  dup(2), fork(2), SCM_RIGHTS and exec share it as a file;
 *   ioctl          on such a descriptor: the argument (and, for the buffer
 *                  ioctls, the buffer it names) is read here and sent; the
 *                  kernel's writes come back as patches applied here;
 *   mmap/munmap    of a shared-memory descriptor: the guest pages behind it
 *                  are mapped from the simulated machine's RAM file, so the
 *                  program and the secure world share the same bytes;
 *   close          of a registered shared-memory descriptor: the program's own
 *                  pages are given back to it (see "registering memory");
 *   read/write/poll, dup*, fcntl(F_DUPFD*), close_range/closefrom and fork
 *                  where the above needs them.
 *
 * Registering memory.  TEE_IOC_SHM_REGISTER must make the bytes the program
 * has at an address the bytes the secure world reads and writes, as Linux's
 * pin_user_pages does.  The program's anonymous memory is not guest memory,
 * so before forwarding the ioctl this library moves each page of the range
 * into the guest: it asks the guest kernel for a fresh guest page (BACK),
 * copies the page's bytes there and mremap(2)s a shared mapping of that page
 * of the RAM file over the program's page, at the same address and with the
 * same contents.  Pages already moved (another registration on the same page)
 * are reused.  When the last registration using a page is closed, the page is
 * moved back: copied into fresh private anonymous memory mremap(2)ed over it,
 * and the guest page is given back (UNBACK).  Limits: another thread of the
 * program writing to a page while it is being moved can lose that write; only
 * private writable mappings can be registered (a shared file mapping fails
 * with EFAULT here, Linux would pin it); a forked child gets private copies
 * of registered pages (as Linux copies pinned pages at fork).
 *
 * Process state.  Everything this library remembers is in `tdv` below, one
 * struct, guarded by its mutex; the fork handlers keep the mutex consistent
 * and rebuild in the child what belongs to the parent (its mm connection,
 * its moved pages).  Descriptors are never cached: whether a descriptor is
 * one of the guest's files is asked of the kernel each time (a SOCK_SEQPACKET
 * socket whose peer is the device server's process), so dup, fork, exec and
 * SCM_RIGHTS need no bookkeeping.  The `known` bitmap only lets read, write
 * and poll skip that question for descriptors that never were ours.
 *
 * Not intercepted: raw system calls (syscall(2), inline svc), statically
 * linked programs, mremap of the guest's mappings (refused with EINVAL).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <ucontext.h>
#include <unistd.h>

#include <linux/tee.h>   /* Debian linux-libc-dev: the ioctl numbers and layouts */

#include "teedev_wire.h"

#define TDV_PAGE        4096u
#define TDV_ENV_SOCKET  "STUBDOM_TEEDEV"
#define TDV_KNOWN_FDS   65536   /* descriptors the `known` bitmap covers */
#define TDV_HIGH_FD     512     /* where the mm connection is moved out of the way */
#define TDV_MOVER_STACK (64 * 1024)  /* the stack pages are moved from (see page_replace) */

/* A mapping of a shared-memory object (mmap of a tee_shm descriptor). */
struct tdv_map {
	uintptr_t addr;
	size_t npages;
	size_t left;          /* pages still mapped */
	uint64_t handle;      /* the guest kernel's name for the mapping */
	uint8_t *present;     /* one byte per page */
};

/* A page of the program moved into the guest. */
struct tdv_page {
	uintptr_t addr;
	uint64_t frame;       /* its page in the RAM file */
	unsigned users;       /* registrations (made or being made) using it */
};

/* A registration the program made (TEE_IOC_SHM_REGISTER). */
struct tdv_reg {
	dev_t dev;            /* the descriptor's socket, by inode */
	ino_t ino;
	uintptr_t start;      /* its pages */
	size_t npages;
};

static struct {
	pthread_mutex_t lock;
	char path[PATH_MAX];      /* the device socket */
	int have_path;
	pid_t server;             /* the device server's pid, 0 = not learnt */
	int mm_fd;                /* this process's mm connection, -1 = none */
	uint8_t token[16];
	int ram_known;            /* ram_dev/ram_ino describe the RAM file */
	dev_t ram_dev;
	ino_t ram_ino;
	struct tdv_map *maps;
	size_t nmaps, capmaps;
	struct tdv_page *pages;
	size_t npages, cappages;
	struct tdv_reg *regs;
	size_t nregs, capregs;
	int used;                 /* any device opened or descriptor received */
	void *mover;              /* the stack page moves run on (used under the lock) */
	uint64_t known[TDV_KNOWN_FDS / 64];
	/* the C library's own functions */
	int (*open)(const char *, int, ...);
	int (*openat)(int, const char *, int, ...);
	int (*ioctl)(int, unsigned long, ...);
	int (*close)(int);
	ssize_t (*read)(int, void *, size_t);
	ssize_t (*write)(int, const void *, size_t);
	int (*poll)(struct pollfd *, nfds_t, int);
	int (*dup)(int);
	int (*dup2)(int, int);
	int (*dup3)(int, int, int);
	int (*fcntl)(int, int, ...);
} tdv = { .lock = PTHREAD_MUTEX_INITIALIZER, .mm_fd = -1 };

/* -- raw helpers (never re-enter our own wrappers) --------------------------------- */

static void *sys_mmap(void *a, size_t l, int p, int f, int fd, off_t o)
{
	return (void *)syscall(SYS_mmap, a, l, p, f, fd, o);
}

static int sys_munmap(void *a, size_t l) { return (int)syscall(SYS_munmap, a, l); }
static int sys_close(int fd) { return (int)syscall(SYS_close, fd); }

static void *sys_mremap_fixed(void *old, size_t len, void *new)
{
	return (void *)syscall(SYS_mremap, old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, new);
}

static void resolve(void)
{
	if (tdv.open)
		return;
	tdv.openat = dlsym(RTLD_NEXT, "openat");
	tdv.ioctl = dlsym(RTLD_NEXT, "ioctl");
	tdv.close = dlsym(RTLD_NEXT, "close");
	tdv.read = dlsym(RTLD_NEXT, "read");
	tdv.write = dlsym(RTLD_NEXT, "write");
	tdv.poll = dlsym(RTLD_NEXT, "poll");
	tdv.dup = dlsym(RTLD_NEXT, "dup");
	tdv.dup2 = dlsym(RTLD_NEXT, "dup2");
	tdv.dup3 = dlsym(RTLD_NEXT, "dup3");
	tdv.fcntl = dlsym(RTLD_NEXT, "fcntl");
	tdv.open = dlsym(RTLD_NEXT, "open");
}

static void known_set(int fd, int on)
{
	if (fd < 0 || fd >= TDV_KNOWN_FDS)
		return;
	if (on)
		__atomic_or_fetch(&tdv.known[fd / 64], 1ull << (fd % 64), __ATOMIC_RELAXED);
	else
		__atomic_and_fetch(&tdv.known[fd / 64], ~(1ull << (fd % 64)), __ATOMIC_RELAXED);
}

static int known_get(int fd)
{
	if (fd < 0 || fd >= TDV_KNOWN_FDS)
		return 0;
	return (__atomic_load_n(&tdv.known[fd / 64], __ATOMIC_RELAXED) >> (fd % 64)) & 1;
}

/* copy_from_user / copy_to_user on our own memory: a bad address is EFAULT,
 * never a crash (process_vm_*v on ourselves; a pipe where that is refused). */
static int peek(uintptr_t addr, void *buf, size_t len)
{
	struct iovec l = { buf, len }, r = { (void *)addr, len };
	ssize_t n = process_vm_readv(getpid(), &l, 1, &r, 1, 0);
	int p[2], rc = -EFAULT;

	if (n == (ssize_t)len)
		return 0;
	if (n >= 0 || errno == EFAULT)
		return -EFAULT;
	if (pipe2(p, O_CLOEXEC))
		return -errno;
	if (syscall(SYS_write, p[1], (void *)addr, len) == (long)len &&
	    syscall(SYS_read, p[0], buf, len) == (long)len)
		rc = 0;
	sys_close(p[0]);
	sys_close(p[1]);
	return rc;
}

static int poke(uintptr_t addr, const void *buf, size_t len)
{
	struct iovec l = { (void *)buf, len }, r = { (void *)addr, len };
	ssize_t n = process_vm_writev(getpid(), &l, 1, &r, 1, 0);
	int p[2], rc = -EFAULT;

	if (n == (ssize_t)len)
		return 0;
	if (n >= 0 || errno == EFAULT)
		return -EFAULT;
	if (pipe2(p, O_CLOEXEC))
		return -errno;
	if (syscall(SYS_write, p[1], buf, len) == (long)len &&
	    syscall(SYS_read, p[0], (void *)addr, len) == (long)len)
		rc = 0;
	sys_close(p[0]);
	sys_close(p[1]);
	return rc;
}

/* -- /proc/self/maps ------------------------------------------------------------- */

struct vma {
	uintptr_t start, end;
	int r, w, shared;
	unsigned long long offset;
	unsigned maj, min;
	unsigned long long ino;
};

/* The whole of /proc/self/maps in a malloc'd, NUL-terminated buffer. */
static char *maps_load(void)
{
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);

	if (!buf || fd < 0) {
		free(buf);
		if (fd >= 0)
			sys_close(fd);
		return NULL;
	}
	for (;;) {
		long n;

		if (len + 4096 + 1 > cap) {
			char *more = realloc(buf, cap * 2);

			if (!more) {
				free(buf);
				sys_close(fd);
				return NULL;
			}
			buf = more;
			cap *= 2;
		}
		n = syscall(SYS_read, fd, buf + len, cap - len - 1);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	sys_close(fd);
	buf[len] = 0;
	return buf;
}

static int maps_find(const char *maps, uintptr_t addr, struct vma *v)
{
	const char *line = maps;

	while (line && *line) {
		char perms[5] = { 0 };
		unsigned long long s, e, off, ino;
		unsigned maj, min;

		if (sscanf(line, "%llx-%llx %4s %llx %x:%x %llu", &s, &e, perms, &off, &maj, &min, &ino) == 7 &&
		    s <= addr && addr < e) {
			v->start = (uintptr_t)s;
			v->end = (uintptr_t)e;
			v->r = perms[0] == 'r';
			v->w = perms[1] == 'w';
			v->shared = perms[3] == 's';
			v->offset = off;
			v->maj = maj;
			v->min = min;
			v->ino = ino;
			return 1;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return 0;
}

/* Is [addr, addr + len) mapped writable throughout? */
static int writable(uintptr_t addr, size_t len)
{
	char *maps = maps_load();
	uintptr_t a = addr;
	int ok = maps != NULL;
	struct vma v;

	while (ok && a < addr + len) {
		ok = maps_find(maps, a, &v) && v.w;
		a = v.end;
	}
	free(maps);
	return ok;
}

static int vma_is_ram(const struct vma *v)
{
	return tdv.ram_known && v->ino == (unsigned long long)tdv.ram_ino &&
	       v->maj == major(tdv.ram_dev) && v->min == minor(tdv.ram_dev);
}

/* -- the device socket --------------------------------------------------------------- */

static int have_path(void)
{
	const char *p;

	if (tdv.have_path)
		return 1;
	p = getenv(TDV_ENV_SOCKET);
	if (!p || !*p || strlen(p) >= sizeof(tdv.path))
		return 0;
	strcpy(tdv.path, p);
	tdv.have_path = 1;
	return 1;
}

/* A new connection to the device socket (paths past sun_path go through
 * /proc/self/fd, as the server binds them). */
static int dev_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, rc, dfd = -1;

	if (!have_path())
		return -ENOENT;
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (strlen(tdv.path) < sizeof(sa.sun_path)) {
		strcpy(sa.sun_path, tdv.path);
	} else {
		char dir[PATH_MAX];
		char *slash;

		strcpy(dir, tdv.path);
		slash = strrchr(dir, '/');
		if (!slash) {
			sys_close(fd);
			return -ENAMETOOLONG;
		}
		*slash = 0;
		dfd = (int)syscall(SYS_openat, AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0) {
			sys_close(fd);
			return -ENOENT;
		}
		snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", dfd, slash + 1);
	}
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (dfd >= 0)
		sys_close(dfd);
	if (rc) {
		rc = -errno;
		sys_close(fd);
		return rc == -ECONNREFUSED ? -ENOENT : rc;
	}
	{
		/* a server of another user is not our guest (root's is) */
		struct ucred cr;
		socklen_t l = sizeof(cr);

		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) || (cr.uid != geteuid() && cr.uid != 0)) {
			sys_close(fd);
			return -EACCES;
		}
	}
	return fd;
}

static pid_t peer_pid(int fd)
{
	struct ucred cr;
	socklen_t l = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l))
		return 0;
	return cr.pid;
}

static pid_t server_pid(void)
{
	pid_t pid = __atomic_load_n(&tdv.server, __ATOMIC_RELAXED);
	int fd;

	if (pid)
		return pid;
	fd = dev_connect();   /* a probe: the server drops a connection with no request */
	if (fd < 0)
		return 0;
	pid = peer_pid(fd);
	sys_close(fd);
	__atomic_store_n(&tdv.server, pid, __ATOMIC_RELAXED);
	return pid;
}

/* Is this descriptor one of the guest's files (device or shared memory)? */
static int is_ours(int fd)
{
	int v;
	socklen_t l = sizeof(v);
	pid_t peer;

	if (fd < 0 || fd == tdv.mm_fd)
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &l) || v != AF_UNIX)
		return 0;
	l = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &l) || v != SOCK_SEQPACKET)
		return 0;
	peer = peer_pid(fd);
	return peer > 0 && peer == server_pid();
}

/*
 * One request on `conn` and its answer.  The answer is read into `rsp`
 * (rspcap bytes); a descriptor it carries goes to *fd_out (else -1).
 * Returns the answer's length, or -errno when there was none.
 */
static ssize_t call(int conn, const struct iovec *iov, int niov, void *rsp, size_t rspcap, int *fd_out)
{
	int sp[2];
	union { char buf[CMSG_SPACE(sizeof(int) * 2)]; struct cmsghdr align; } c;
	struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = niov };
	struct cmsghdr *cm;
	struct iovec riov = { rsp, rspcap };
	ssize_t n;
	int rc;

	*fd_out = -1;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp))
		return -errno;
	memset(&c, 0, sizeof(c));
	mh.msg_control = c.buf;
	mh.msg_controllen = CMSG_SPACE(sizeof(int));
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &sp[1], sizeof(int));
	do
		n = sendmsg(conn, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	rc = n < 0 ? -errno : 0;
	sys_close(sp[1]);
	if (rc) {
		sys_close(sp[0]);
		return rc == -EPIPE || rc == -ECONNRESET ? -EIO : rc;
	}
	/* a signal does not end the call: it runs on in the guest kernel, as
	 * with SA_RESTART (docs/guest-dev.md) */
	memset(&mh, 0, sizeof(mh));
	memset(&c, 0, sizeof(c));
	mh.msg_iov = &riov;
	mh.msg_iovlen = 1;
	mh.msg_control = c.buf;
	mh.msg_controllen = sizeof(c.buf);
	do
		n = recvmsg(sp[0], &mh, 0);
	while (n < 0 && errno == EINTR);
	rc = n < 0 ? -errno : 0;
	sys_close(sp[0]);
	for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			int fds[2], k, nfd = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));

			memcpy(fds, CMSG_DATA(cm), sizeof(int) * (nfd > 2 ? 2 : nfd));
			for (k = 0; k < nfd && k < 2; k++) {
				if (*fd_out < 0)
					*fd_out = fds[k];
				else
					sys_close(fds[k]);
			}
		}
	}
	if (rc)
		return rc;
	if (n < (ssize_t)sizeof(struct teedev_rsp) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		if (*fd_out >= 0) {
			sys_close(*fd_out);
			*fd_out = -1;
		}
		return -EIO;   /* no answer: the guest kernel is gone */
	}
	return n;
}

static void req_init(struct teedev_req *r, uint16_t op)
{
	memset(r, 0, sizeof(*r));
	r->magic = TEEDEV_MAGIC;
	r->version = TEEDEV_WIRE_VERSION;
	r->op = op;
	memcpy(r->token, tdv.token, sizeof(r->token));
}

/* A simple request with a uint64_t payload on `conn`; the answer's data
 * (up to `cap` uint64_t) into `out`.  Returns the answer's ret or -errno. */
static long simple_call(int conn, uint16_t op, const uint64_t *pay, size_t npay, uint64_t *out, size_t cap,
			size_t *nout, int *fd_out, struct teedev_rsp *hdr_out)
{
	struct teedev_req req;
	struct iovec iov[2];
	size_t rspcap = sizeof(struct teedev_rsp) + cap * sizeof(uint64_t);
	char *rsp = malloc(rspcap);
	struct teedev_rsp hdr;
	ssize_t n;
	int fd;

	if (!rsp)
		return -ENOMEM;
	req_init(&req, op);
	req.npayload = (uint32_t)(npay * sizeof(uint64_t));
	iov[0].iov_base = &req;
	iov[0].iov_len = sizeof(req);
	iov[1].iov_base = (void *)pay;
	iov[1].iov_len = npay * sizeof(uint64_t);
	n = call(conn, iov, npay ? 2 : 1, rsp, rspcap, &fd);
	if (n < 0) {
		free(rsp);
		return n;
	}
	memcpy(&hdr, rsp, sizeof(hdr));
	if (hdr_out)
		*hdr_out = hdr;
	if (nout) {
		size_t have = (size_t)n - sizeof(hdr);
		size_t k = hdr.ndata / sizeof(uint64_t);

		if (hdr.npatches || hdr.ndata > have || k > cap)
			k = 0;
		memcpy(out, rsp + sizeof(hdr), k * sizeof(uint64_t));
		*nout = k;
	}
	free(rsp);
	if (fd_out)
		*fd_out = fd;
	else if (fd >= 0)
		sys_close(fd);
	return hdr.ret;
}

/* (lock held) This process's mm connection, made on first need. */
static int mm_conn(void)
{
	struct teedev_rsp hdr;
	long rc;
	int fd;

	if (tdv.mm_fd >= 0)
		return tdv.mm_fd;
	fd = dev_connect();
	if (fd < 0)
		return fd;
	memset(tdv.token, 0, sizeof(tdv.token));
	rc = simple_call(fd, TEEDEV_OP_MM_HELLO, NULL, 0, NULL, 0, NULL, NULL, &hdr);
	if (rc < 0) {
		sys_close(fd);
		return (int)rc;
	}
	if (fd < TDV_HIGH_FD) {   /* keep it out of the program's way */
		int high = tdv.fcntl ? tdv.fcntl(fd, F_DUPFD_CLOEXEC, TDV_HIGH_FD) : -1;

		if (high >= 0) {
			sys_close(fd);
			fd = high;
		}
	}
	memcpy(tdv.token, hdr.token, sizeof(tdv.token));
	tdv.mm_fd = fd;
	return fd;
}

static void note_ram(int ramfd)
{
	struct stat sb;

	if (!tdv.ram_known && !fstat(ramfd, &sb)) {
		tdv.ram_dev = sb.st_dev;
		tdv.ram_ino = sb.st_ino;
		tdv.ram_known = 1;
	}
}

/* -- open -------------------------------------------------------------------------- */

/* "tee<N>" or "teepriv<N>" when `path` names one of the guest's nodes. */
static const char *dev_name(const char *path)
{
	const char *n, *d;

	if (!path || strncmp(path, "/dev/", 5))
		return NULL;
	n = path + 5;
	if (!strncmp(n, "teepriv", 7))
		d = n + 7;
	else if (!strncmp(n, "tee", 3))
		d = n + 3;
	else
		return NULL;
	if (!*d)
		return NULL;
	for (; *d; d++)
		if (*d < '0' || *d > '9')
			return NULL;
	return n;
}

static int tdv_open(const char *name, int flags)
{
	struct teedev_req req;
	struct iovec iov[2];
	struct teedev_rsp rsp;
	ssize_t n;
	int fd, extra;

	if ((flags & O_CREAT) && (flags & O_EXCL)) {
		errno = EEXIST;
		return -1;
	}
	if (flags & O_DIRECTORY) {
		errno = ENOTDIR;
		return -1;
	}
	fd = dev_connect();
	if (fd < 0) {
		errno = -fd;
		return -1;
	}
	req_init(&req, TEEDEV_OP_OPEN);
	req.cmd = (uint64_t)(unsigned)flags;
	req.npayload = (uint32_t)strlen(name) + 1;
	iov[0].iov_base = &req;
	iov[0].iov_len = sizeof(req);
	iov[1].iov_base = (void *)name;
	iov[1].iov_len = req.npayload;
	n = call(fd, iov, 2, &rsp, sizeof(rsp), &extra);
	if (extra >= 0)
		sys_close(extra);
	if (n < 0 || rsp.ret < 0) {
		sys_close(fd);
		errno = n < 0 ? (int)-n : -rsp.ret;
		return -1;
	}
	if (!(flags & O_CLOEXEC)) {
		int fl = tdv.fcntl(fd, F_GETFD);

		tdv.fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
	}
	__atomic_store_n(&tdv.server, peer_pid(fd), __ATOMIC_RELAXED);
	tdv.used = 1;
	known_set(fd, 1);
	return fd;
}

static int want_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

int open(const char *path, int flags, ...)
{
	const char *name = dev_name(path);
	mode_t mode = 0;

	resolve();
	if (want_mode(flags)) {
		va_list ap;

		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (name && have_path())
		return tdv_open(name, flags);
	return tdv.open(path, flags, mode);
}

int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int __open_2(const char *path, int flags)
{
	return open(path, flags);
}

int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));

int openat(int dirfd, const char *path, int flags, ...)
{
	const char *name = dev_name(path);
	mode_t mode = 0;

	resolve();
	if (want_mode(flags)) {
		va_list ap;

		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (name && have_path())
		return tdv_open(name, flags);
	return tdv.openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

int __openat_2(int dirfd, const char *path, int flags)
{
	return openat(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags) __attribute__((alias("__openat_2")));

/* -- registering memory: moving pages into the guest and back -------------------- */

static struct tdv_page *page_find(uintptr_t addr)
{
	size_t i;

	for (i = 0; i < tdv.npages; i++)
		if (tdv.pages[i].addr == addr)
			return &tdv.pages[i];
	return NULL;
}

static void page_forget(struct tdv_page *p)
{
	*p = tdv.pages[--tdv.npages];
}

/* Copy the page at `addr` into `dst_fd`/`frame` (or fresh anonymous memory
 * when dst_fd < 0) and put that in its place. */
static int page_replace_now(uintptr_t addr, int dst_fd, uint64_t frame, int prot)
{
	void *tmp = dst_fd >= 0 ? sys_mmap(NULL, TDV_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, dst_fd,
					   (off_t)(frame * TDV_PAGE))
				: sys_mmap(NULL, TDV_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (tmp == MAP_FAILED)
		return -ENOMEM;
	memcpy(tmp, (void *)addr, TDV_PAGE);
	if (prot != (PROT_READ | PROT_WRITE))
		mprotect(tmp, TDV_PAGE, prot);
	if (sys_mremap_fixed(tmp, TDV_PAGE, (void *)addr) == MAP_FAILED) {
		int e = errno;

		sys_munmap(tmp, TDV_PAGE);
		return -e;
	}
	return 0;
}

struct move {
	uintptr_t addr;
	int fd;
	uint64_t frame;
	int prot;
	int rc;
};

static void mover_entry(unsigned int hi, unsigned int lo)
{
	struct move *m = (struct move *)(((uintptr_t)hi << 32) | lo);
	int rc = page_replace_now(m->addr, m->fd, m->frame, m->prot);

	m->rc = rc;   /* written after the move: lands in the page now in place */
}

/*
 * (lock held) page_replace_now, run on a stack of its own with every signal
 * blocked.  The page may hold this very thread's stack (libteec registers a
 * caller's buffer on the stack as it is): a write to it between the copy and
 * the remap would be lost, so nothing of this thread may run on it then.
 */
static int page_replace(uintptr_t addr, int dst_fd, uint64_t frame, int prot)
{
	struct move m = { addr, dst_fd, frame, prot, -EIO };
	ucontext_t here, mover;
	sigset_t all, old;

	if (!tdv.mover) {
		void *stack = sys_mmap(NULL, TDV_MOVER_STACK, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);

		if (stack == MAP_FAILED)
			return -ENOMEM;
		tdv.mover = stack;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	if (getcontext(&mover)) {
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		return -errno;
	}
	mover.uc_stack.ss_sp = tdv.mover;
	mover.uc_stack.ss_size = TDV_MOVER_STACK;
	mover.uc_link = &here;
	makecontext(&mover, (void (*)(void))mover_entry, 2, (unsigned int)((uintptr_t)&m >> 32),
		    (unsigned int)(uintptr_t)&m);
	swapcontext(&here, &mover);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return m.rc;
}

/* (lock held) Give back pages no registration uses any more. */
static void pages_release(uintptr_t start, size_t npages)
{
	uint64_t *gone = malloc(npages * sizeof(uint64_t));
	size_t ngone = 0, i;
	char *maps = maps_load();

	for (i = 0; i < npages; i++) {
		uintptr_t a = start + i * TDV_PAGE;
		struct tdv_page *p = page_find(a);
		struct vma v;

		if (!p || --p->users)
			continue;
		/* still the guest page we put there? then move it back */
		if (maps && maps_find(maps, a, &v) && vma_is_ram(&v) &&
		    v.offset + (a - v.start) == p->frame * TDV_PAGE)
			page_replace(a, -1, 0, PROT_READ | PROT_WRITE);
		if (gone)
			gone[ngone++] = a;
		page_forget(p);
	}
	free(maps);
	if (ngone && tdv.mm_fd >= 0)
		simple_call(tdv.mm_fd, TEEDEV_OP_UNBACK, gone, ngone, NULL, 0, NULL, NULL, NULL);
	free(gone);
}

/*
 * (lock held) Make [start, start + npages pages) guest memory for a
 * registration: count it as a user of every page it could take.  Pages are
 * moved up to the first that cannot be (unmapped, read-only, shared, another
 * mapping of the guest): the guest kernel's pin then fails there as Linux's
 * would.  Returns how many pages it took (users counted), or -errno.
 */
static long pages_take(uintptr_t start, size_t npages)
{
	uint64_t *want = malloc(npages * sizeof(uint64_t) + 1), *frames = NULL;
	size_t nwant = 0, taken, i, k, nframes = 0;
	char *maps = maps_load();
	int ramfd = -1, conn;
	long rc = 0;

	if (!want || !maps) {
		free(want);
		free(maps);
		return -ENOMEM;
	}
	for (taken = 0; taken < npages; taken++) {
		uintptr_t a = start + taken * TDV_PAGE;
		struct tdv_page *p = page_find(a);
		struct vma v;

		if (!maps_find(maps, a, &v) || !v.r || !v.w)
			break;
		if (vma_is_ram(&v)) {
			if (!p || v.offset + (a - v.start) != p->frame * TDV_PAGE)
				break;   /* a mapping of a tee_shm, not a moved page: pin fails */
			continue;
		}
		if (v.shared)
			break;
		want[nwant++] = a;
	}
	free(maps);
	if (nwant) {
		conn = mm_conn();
		if (conn < 0) {
			free(want);
			return conn;
		}
		frames = malloc(nwant * sizeof(uint64_t));
		rc = frames ? simple_call(conn, TEEDEV_OP_BACK, want, nwant, frames, nwant, &nframes, &ramfd, NULL)
			    : -ENOMEM;
		if (rc >= 0 && (nframes != nwant || ramfd < 0))
			rc = -EIO;
		if (rc >= 0)
			note_ram(ramfd);
		for (k = 0; rc >= 0 && k < nwant; k++) {
			struct tdv_page *p = page_find(want[k]);
			int e;

			if (!p) {
				if (tdv.npages == tdv.cappages) {
					size_t cap = tdv.cappages ? tdv.cappages * 2 : 64;
					struct tdv_page *more = realloc(tdv.pages, cap * sizeof(*more));

					if (!more) {
						rc = -ENOMEM;
						break;
					}
					tdv.pages = more;
					tdv.cappages = cap;
				}
				p = &tdv.pages[tdv.npages++];
				p->users = 0;
			}
			p->addr = want[k];
			p->frame = frames[k];
			e = page_replace(want[k], ramfd, frames[k], PROT_READ | PROT_WRITE);
			if (e) {
				page_forget(p);
				rc = e;
			}
		}
		if (ramfd >= 0)
			sys_close(ramfd);
		free(frames);
		if (rc < 0) {
			/* give back what was moved before the failure */
			for (i = 0; i < k; i++) {
				struct tdv_page *p = page_find(want[i]);

				if (p && !p->users) {
					page_replace(want[i], -1, 0, PROT_READ | PROT_WRITE);
					page_forget(p);
				}
			}
			if (k)
				simple_call(conn, TEEDEV_OP_UNBACK, want, k, NULL, 0, NULL, NULL, NULL);
			free(want);
			return rc;
		}
	}
	free(want);
	for (i = 0; i < taken; i++)
		page_find(start + i * TDV_PAGE)->users++;
	return (long)taken;
}

static void reg_add(int fd, uintptr_t start, size_t npages)
{
	struct stat sb;

	if (fstat(fd, &sb))
		return;
	if (tdv.nregs == tdv.capregs) {
		size_t cap = tdv.capregs ? tdv.capregs * 2 : 16;
		struct tdv_reg *more = realloc(tdv.regs, cap * sizeof(*more));

		if (!more)
			return;
		tdv.regs = more;
		tdv.capregs = cap;
	}
	tdv.regs[tdv.nregs].dev = sb.st_dev;
	tdv.regs[tdv.nregs].ino = sb.st_ino;
	tdv.regs[tdv.nregs].start = start;
	tdv.regs[tdv.nregs].npages = npages;
	tdv.nregs++;
}

/* -- ioctl ----------------------------------------------------------------------------- */

#define TDV_MAX_PATCH_BYTES (TEEDEV_MAX_MSG - sizeof(struct teedev_rsp))

static long tdv_ioctl(int fd, unsigned long request, uintptr_t arg)
{
	size_t argsize = _IOC_SIZE(request);
	uint8_t argbuf[64], *buf = NULL;
	struct teedev_region rg[2];
	struct iovec iov[5];
	struct teedev_req req;
	int niov = 1, nreg = 0, newfd = -1, registering = 0;
	size_t bufsize = 0, rspcap = TEEDEV_MAX_MSG;
	char *rsp;
	uint64_t buf_ptr = 0;
	long taken = 0, ret;
	uintptr_t reg_start = 0;
	size_t reg_pages = 0;
	ssize_t n;
	static const uint8_t pad[8];

	req_init(&req, TEEDEV_OP_IOCTL);
	req.cmd = request;
	req.arg = arg;
	iov[0].iov_base = &req;
	iov[0].iov_len = sizeof(req);
	/* the argument, when the command is one of the TEE's and it is readable */
	if (_IOC_TYPE(request) == TEE_IOC_MAGIC && argsize && argsize <= sizeof(argbuf) &&
	    !peek(arg, argbuf, argsize)) {
		rg[nreg].addr = arg;
		rg[nreg].len = (uint32_t)argsize;
		rg[nreg].flags = TEEDEV_REGION_WRITABLE;
		iov[niov].iov_base = &rg[nreg];
		iov[niov++].iov_len = sizeof(rg[0]);
		iov[niov].iov_base = argbuf;
		iov[niov++].iov_len = argsize;
		nreg++;
		if (argsize % 8) {
			iov[niov].iov_base = (void *)pad;
			iov[niov++].iov_len = 8 - argsize % 8;
		}
		if (request == TEE_IOC_OPEN_SESSION || request == TEE_IOC_INVOKE ||
		    request == TEE_IOC_SUPPL_RECV || request == TEE_IOC_SUPPL_SEND) {
			struct tee_ioctl_buf_data bd;

			memcpy(&bd, argbuf, sizeof(bd));
			buf_ptr = bd.buf_ptr;
			if (bd.buf_len && bd.buf_len <= TEE_MAX_ARG_SIZE) {
				buf = malloc(bd.buf_len + 8);
				if (buf && !peek((uintptr_t)bd.buf_ptr, buf, bd.buf_len)) {
					bufsize = bd.buf_len;
					memset(buf + bufsize, 0, 8);
					rg[nreg].addr = bd.buf_ptr;
					rg[nreg].len = (uint32_t)bufsize;
					/* a session the kernel cannot report is closed again
					 * (tee_ioctl_open_session): it must know beforehand */
					rg[nreg].flags = request != TEE_IOC_OPEN_SESSION ||
							 writable((uintptr_t)bd.buf_ptr, bufsize) ? TEEDEV_REGION_WRITABLE : 0;
					iov[niov].iov_base = &rg[nreg];
					iov[niov++].iov_len = sizeof(rg[0]);
					iov[niov].iov_base = buf;
					iov[niov++].iov_len = bufsize + (8 - bufsize % 8) % 8;
					nreg++;
				}
			}
		}
		if (request == TEE_IOC_SHM_REGISTER) {
			struct tee_ioctl_shm_register_data rd;

			memcpy(&rd, argbuf, sizeof(rd));
			if (!rd.flags && rd.length && rd.addr + rd.length > rd.addr) {
				reg_start = (uintptr_t)rd.addr & ~(uintptr_t)(TDV_PAGE - 1);
				reg_pages = (((uintptr_t)rd.addr + rd.length + TDV_PAGE - 1) & ~(uintptr_t)(TDV_PAGE - 1))
					    - reg_start;
				reg_pages /= TDV_PAGE;
				if (reg_pages <= TEEDEV_MAX_PAGES) {
					registering = 1;
					pthread_mutex_lock(&tdv.lock);
					taken = pages_take(reg_start, reg_pages);
					pthread_mutex_unlock(&tdv.lock);
					if (taken < 0) {
						free(buf);
						return taken;
					}
				}
			}
		}
	}
	(void)buf_ptr;
	req.nregions = (uint32_t)nreg;
	pthread_mutex_lock(&tdv.lock);
	memcpy(req.token, tdv.token, sizeof(req.token));   /* pages_take may have made the mm */
	pthread_mutex_unlock(&tdv.lock);
	rsp = malloc(rspcap);
	if (!rsp) {
		ret = -ENOMEM;
		goto out;
	}
	n = call(fd, iov, niov, rsp, rspcap, &newfd);
	if (n < 0) {
		ret = n;
		goto out;
	}
	{
		struct teedev_rsp hdr;
		size_t at = sizeof(hdr);
		uint32_t k;

		memcpy(&hdr, rsp, sizeof(hdr));
		ret = hdr.ret;
		for (k = 0; k < hdr.npatches && ret >= 0; k++) {
			struct teedev_patch p;

			if (at + sizeof(p) > (size_t)n)
				break;
			memcpy(&p, rsp + at, sizeof(p));
			at += sizeof(p);
			if (p.len > (size_t)n - at)
				break;
			if (poke((uintptr_t)p.addr, rsp + at, p.len))
				ret = -EFAULT;
			at += p.len + (8 - p.len % 8) % 8;
		}
		if (ret >= 0 && newfd >= 0) {
			ret = newfd;
			known_set(newfd, 1);
			tdv.used = 1;
			if (registering) {
				pthread_mutex_lock(&tdv.lock);
				reg_add(newfd, reg_start, (size_t)taken);
				pthread_mutex_unlock(&tdv.lock);
				registering = 0;   /* the pages are the registration's now */
			}
			newfd = -1;
		}
	}
out:
	if (newfd >= 0)
		sys_close(newfd);
	if (registering && taken > 0) {
		pthread_mutex_lock(&tdv.lock);
		pages_release(reg_start, (size_t)taken);
		pthread_mutex_unlock(&tdv.lock);
	}
	free(rsp);
	free(buf);
	return ret;
}

/* The generic ioctls the VFS answers itself, before any driver. */
static int vfs_ioctl(unsigned long request)
{
	return request == FIOCLEX || request == FIONCLEX || request == FIONBIO || request == FIOASYNC;
}

int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	uintptr_t arg;
	long rc;

	resolve();
	va_start(ap, request);
	arg = va_arg(ap, uintptr_t);
	va_end(ap);
	if (vfs_ioctl(request) || !have_path() || !is_ours(fd))
		return tdv.ioctl(fd, request, arg);
	rc = tdv_ioctl(fd, request, arg);
	if (rc < 0) {
		errno = (int)-rc;
		return -1;
	}
	return (int)rc;
}

/* -- mmap -------------------------------------------------------------------------------- */

static void map_add(uintptr_t addr, size_t npages, uint64_t handle)
{
	uint8_t *present = malloc(npages);

	if (!present)
		return;
	memset(present, 1, npages);
	if (tdv.nmaps == tdv.capmaps) {
		size_t cap = tdv.capmaps ? tdv.capmaps * 2 : 16;
		struct tdv_map *more = realloc(tdv.maps, cap * sizeof(*more));

		if (!more) {
			free(present);
			return;
		}
		tdv.maps = more;
		tdv.capmaps = cap;
	}
	tdv.maps[tdv.nmaps++] = (struct tdv_map){ addr, npages, npages, handle, present };
}

/* (lock held) [addr, addr + len) is no longer mapped: forget mappings and
 * moved pages there. */
static void range_gone(uintptr_t addr, size_t len)
{
	uintptr_t end = addr + len;
	uint64_t unmapped[64], unbacked[64];
	size_t nun = 0, nback = 0, i = 0, j;

	while (i < tdv.nmaps) {
		struct tdv_map *m = &tdv.maps[i];
		uintptr_t mend = m->addr + m->npages * TDV_PAGE;

		if (m->addr < end && addr < mend) {
			for (j = 0; j < m->npages; j++) {
				uintptr_t a = m->addr + j * TDV_PAGE;

				if (a >= addr && a < end && m->present[j]) {
					m->present[j] = 0;
					m->left--;
				}
			}
			if (!m->left) {
				if (nun == 64 && tdv.mm_fd >= 0) {
					simple_call(tdv.mm_fd, TEEDEV_OP_UNMAP, unmapped, nun, NULL, 0, NULL, NULL, NULL);
					nun = 0;
				}
				unmapped[nun++] = m->handle;
				free(m->present);
				*m = tdv.maps[--tdv.nmaps];
				continue;
			}
		}
		i++;
	}
	i = 0;
	while (i < tdv.npages) {
		struct tdv_page *p = &tdv.pages[i];

		if (p->addr >= addr && p->addr < end) {
			if (nback == 64 && tdv.mm_fd >= 0) {
				simple_call(tdv.mm_fd, TEEDEV_OP_UNBACK, unbacked, nback, NULL, 0, NULL, NULL, NULL);
				nback = 0;
			}
			unbacked[nback++] = p->addr;
			page_forget(p);
			continue;
		}
		i++;
	}
	if (nun && tdv.mm_fd >= 0)
		simple_call(tdv.mm_fd, TEEDEV_OP_UNMAP, unmapped, nun, NULL, 0, NULL, NULL, NULL);
	if (nback && tdv.mm_fd >= 0)
		simple_call(tdv.mm_fd, TEEDEV_OP_UNBACK, unbacked, nback, NULL, 0, NULL, NULL, NULL);
}

static int overlaps_ours(uintptr_t addr, size_t len)
{
	uintptr_t end = addr + len;
	size_t i;

	for (i = 0; i < tdv.nmaps; i++)
		if (tdv.maps[i].addr < end && addr < tdv.maps[i].addr + tdv.maps[i].npages * TDV_PAGE)
			return 1;
	for (i = 0; i < tdv.npages; i++)
		if (tdv.pages[i].addr >= addr && tdv.pages[i].addr < end)
			return 1;
	return 0;
}

static void *tdv_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	size_t npages = (len + TDV_PAGE - 1) / TDV_PAGE, k, run;
	uint64_t *frames;
	size_t nframes = 0;
	struct teedev_req req;
	struct iovec iov[1];
	char *rsp;
	struct teedev_rsp hdr;
	ssize_t n;
	int ramfd = -1, conn, kind = flags & MAP_TYPE;
	uintptr_t base;

	if (!len || off % TDV_PAGE || off < 0 || npages > TEEDEV_MAX_PAGES) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	pthread_mutex_lock(&tdv.lock);
	conn = mm_conn();
	pthread_mutex_unlock(&tdv.lock);
	if (conn < 0) {
		errno = -conn;
		return MAP_FAILED;
	}
	req_init(&req, TEEDEV_OP_MMAP);
	req.cmd = (uint64_t)prot;
	req.arg = (uint64_t)off / TDV_PAGE;
	req.len = len;
	iov[0].iov_base = &req;
	iov[0].iov_len = sizeof(req);
	rsp = malloc(sizeof(hdr) + npages * sizeof(uint64_t));
	if (!rsp) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	n = call(fd, iov, 1, rsp, sizeof(hdr) + npages * sizeof(uint64_t), &ramfd);
	if (n < 0) {
		free(rsp);
		errno = (int)-n;
		return MAP_FAILED;
	}
	memcpy(&hdr, rsp, sizeof(hdr));
	if (hdr.ret < 0 || ramfd < 0 || hdr.ndata != npages * sizeof(uint64_t) ||
	    (size_t)n < sizeof(hdr) + hdr.ndata) {
		if (ramfd >= 0)
			sys_close(ramfd);
		free(rsp);
		errno = hdr.ret < 0 ? -hdr.ret : EIO;
		return MAP_FAILED;
	}
	frames = (uint64_t *)(rsp + sizeof(hdr));
	nframes = npages;
	if (kind != MAP_PRIVATE)
		kind = MAP_SHARED;
	if (flags & MAP_FIXED) {
		base = (uintptr_t)addr;
	} else {
		void *r = sys_mmap(addr, npages * TDV_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

		if (r == MAP_FAILED) {
			base = 0;
		} else {
			base = (uintptr_t)r;
		}
	}
	for (k = 0; base && k < nframes; k += run) {
		void *r;

		for (run = 1; k + run < nframes && frames[k + run] == frames[k] + run; run++)
			;
		r = sys_mmap((void *)(base + k * TDV_PAGE), run * TDV_PAGE, prot, kind | MAP_FIXED, ramfd,
			     (off_t)(frames[k] * TDV_PAGE));
		if (r == MAP_FAILED) {
			if (!(flags & MAP_FIXED))
				sys_munmap((void *)base, npages * TDV_PAGE);
			base = 0;
		}
	}
	note_ram(ramfd);
	sys_close(ramfd);
	free(rsp);
	pthread_mutex_lock(&tdv.lock);
	if (!base) {
		uint64_t h = hdr.handle;

		simple_call(conn, TEEDEV_OP_UNMAP, &h, 1, NULL, 0, NULL, NULL, NULL);
		pthread_mutex_unlock(&tdv.lock);
		errno = ENOMEM;
		return MAP_FAILED;
	}
	if (flags & MAP_FIXED)
		range_gone(base, npages * TDV_PAGE);   /* whatever was there is gone */
	map_add(base, npages, hdr.handle);
	pthread_mutex_unlock(&tdv.lock);
	return (void *)base;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *r;

	if (fd >= 0 && !(flags & MAP_ANONYMOUS) && have_path() && is_ours(fd))
		return tdv_mmap(addr, len, prot, flags, fd, off);
	r = sys_mmap(addr, len, prot, flags, fd, off);
	if (r != MAP_FAILED && (flags & MAP_FIXED) && (tdv.nmaps || tdv.npages)) {
		pthread_mutex_lock(&tdv.lock);
		range_gone((uintptr_t)r, len);
		pthread_mutex_unlock(&tdv.lock);
	}
	return r;
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));

int munmap(void *addr, size_t len)
{
	int rc = sys_munmap(addr, len);

	if (!rc && (tdv.nmaps || tdv.npages)) {
		pthread_mutex_lock(&tdv.lock);
		range_gone((uintptr_t)addr, len);
		pthread_mutex_unlock(&tdv.lock);
	}
	return rc;
}

void *mremap(void *old, size_t oldlen, size_t newlen, int flags, ...)
{
	void *new = NULL;
	int refuse = 0;

	if (flags & MREMAP_FIXED) {
		va_list ap;

		va_start(ap, flags);
		new = va_arg(ap, void *);
		va_end(ap);
	}
	if (tdv.nmaps || tdv.npages) {
		pthread_mutex_lock(&tdv.lock);
		refuse = overlaps_ours((uintptr_t)old, oldlen) ||
			 ((flags & MREMAP_FIXED) && overlaps_ours((uintptr_t)new, newlen));
		pthread_mutex_unlock(&tdv.lock);
	}
	if (refuse) {
		errno = EINVAL;   /* the guest's pages do not move (docs/guest-dev.md) */
		return MAP_FAILED;
	}
	return (void *)syscall(SYS_mremap, old, oldlen, newlen, flags, new);
}

/* -- close, dup ------------------------------------------------------------------------ */

/* Does any descriptor but `except` refer to this socket inode? */
static int socket_shared(ino_t ino, int except)
{
	char want[64], link[64], path[64];
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int found = 0, dfd;

	if (!d)
		return 1;   /* cannot tell: keep the pages moved */
	dfd = dirfd(d);
	snprintf(want, sizeof(want), "socket:[%llu]", (unsigned long long)ino);
	while (!found && (e = readdir(d))) {
		int fd = atoi(e->d_name);
		ssize_t n;

		if (e->d_name[0] == '.' || fd == except || fd == dfd)
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, link, sizeof(link) - 1);
		if (n > 0) {
			link[n] = 0;
			found = !strcmp(link, want);
		}
	}
	closedir(d);
	return found;
}

/* (lock held) The program is closing `fd`: if it is the last descriptor of
 * a registration, give the registration's pages back to the program. */
static void reg_closing(int fd)
{
	struct stat sb;
	size_t i;

	if (fstat(fd, &sb) || !S_ISSOCK(sb.st_mode))
		return;
	for (i = 0; i < tdv.nregs; i++) {
		struct tdv_reg r = tdv.regs[i];

		if (r.dev != sb.st_dev || r.ino != sb.st_ino)
			continue;
		if (socket_shared(r.ino, fd))
			return;
		tdv.regs[i] = tdv.regs[--tdv.nregs];
		pages_release(r.start, r.npages);
		return;
	}
}

int close(int fd)
{
	resolve();
	if (fd >= 0 && fd == tdv.mm_fd) {
		errno = EBADF;   /* the library's own descriptor: not the program's to close */
		return -1;
	}
	if (tdv.nregs) {
		pthread_mutex_lock(&tdv.lock);
		if (tdv.nregs)
			reg_closing(fd);
		pthread_mutex_unlock(&tdv.lock);
	}
	known_set(fd, 0);
	return tdv.close(fd);
}

/* (lock held) A descriptor is about to be replaced by dup2/dup3: if it is
 * the mm connection, move that out of the way first. */
static void protect_mm(int newfd)
{
	if (newfd >= 0 && newfd == tdv.mm_fd) {
		int moved = tdv.fcntl(tdv.mm_fd, F_DUPFD_CLOEXEC, TDV_HIGH_FD);

		if (moved >= 0) {
			sys_close(tdv.mm_fd);
			tdv.mm_fd = moved;
		}
	}
}

int dup(int fd)
{
	int r;

	resolve();
	r = tdv.dup(fd);
	if (r >= 0)
		known_set(r, known_get(fd));
	return r;
}

int dup2(int fd, int newfd)
{
	int r;

	resolve();
	pthread_mutex_lock(&tdv.lock);
	protect_mm(newfd);
	if (tdv.nregs && fd != newfd)
		reg_closing(newfd);
	pthread_mutex_unlock(&tdv.lock);
	r = tdv.dup2(fd, newfd);
	if (r >= 0)
		known_set(r, known_get(fd));
	return r;
}

int dup3(int fd, int newfd, int flags)
{
	int r;

	resolve();
	pthread_mutex_lock(&tdv.lock);
	protect_mm(newfd);
	if (tdv.nregs && fd != newfd)
		reg_closing(newfd);
	pthread_mutex_unlock(&tdv.lock);
	r = tdv.dup3(fd, newfd, flags);
	if (r >= 0)
		known_set(r, known_get(fd));
	return r;
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	long arg;
	int r;

	resolve();
	va_start(ap, cmd);
	arg = va_arg(ap, long);
	va_end(ap);
	r = tdv.fcntl(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		known_set(r, known_get(fd));
	return r;
}

int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

int close_range(unsigned int first, unsigned int last, int flags)
{
	unsigned int mm = tdv.mm_fd >= 0 ? (unsigned int)tdv.mm_fd : UINT_MAX;
	int rc = 0;

	if (mm != UINT_MAX && first <= mm && mm <= last) {
		if (mm > first)
			rc = (int)syscall(SYS_close_range, first, mm - 1, flags);
		if (!rc && mm < last)
			rc = (int)syscall(SYS_close_range, mm + 1, last, flags);
		return rc;
	}
	return (int)syscall(SYS_close_range, first, last, flags);
}

void closefrom(int lowfd)
{
	close_range(lowfd < 0 ? 0 : (unsigned int)lowfd, UINT_MAX, 0);
}

/* -- read, write, poll: a tee file has no read, write or poll -------------------------- */

ssize_t read(int fd, void *buf, size_t n)
{
	resolve();
	if (known_get(fd) && is_ours(fd)) {
		errno = EINVAL;
		return -1;
	}
	return tdv.read(fd, buf, n);
}

ssize_t write(int fd, const void *buf, size_t n)
{
	resolve();
	if (known_get(fd) && is_ours(fd)) {
		errno = EINVAL;
		return -1;
	}
	return tdv.write(fd, buf, n);
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	nfds_t i;
	int ready = 0;

	resolve();
	if (!tdv.used)
		return tdv.poll(fds, nfds, timeout);
	for (i = 0; i < nfds; i++) {
		if (known_get(fds[i].fd) && is_ours(fds[i].fd))
			ready++;
	}
	if (!ready)
		return tdv.poll(fds, nfds, timeout);
	{
		/* DEFAULT_POLLMASK for a file without .poll: always readable and writable */
		int others, rc;
		nfds_t k;

		for (k = 0, others = 0; k < nfds; k++)
			if (!(known_get(fds[k].fd) && is_ours(fds[k].fd)))
				others++;
		rc = others ? tdv.poll(fds, nfds, 0) : 0;   /* the others, without waiting */
		if (rc < 0)
			return rc;
		ready = 0;
		for (k = 0; k < nfds; k++) {
			if (known_get(fds[k].fd) && is_ours(fds[k].fd))
				fds[k].revents = fds[k].events & (POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM);
			if (fds[k].revents)
				ready++;
		}
		return ready;
	}
}

/* -- fork ---------------------------------------------------------------------------------- */

static void atfork_prepare(void)
{
	pthread_mutex_lock(&tdv.lock);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&tdv.lock);
}

/*
 * The child has the parent's memory and descriptors.  Pages the parent moved
 * into the guest become private copies (Linux copies pinned pages at fork);
 * the parent's registrations stay the parent's.  The child takes references
 * of its own on the guest's mappings it inherited (ADOPT, through an mm of
 * its own) before it lets go of the parent's mm connection, so no mapping is
 * ever left without a reference.
 */
static void atfork_child(void)
{
	int parent_mm = tdv.mm_fd;
	size_t i;

	pthread_mutex_init(&tdv.lock, NULL);
	for (i = 0; i < tdv.npages; i++)
		page_replace(tdv.pages[i].addr, -1, 0, PROT_READ | PROT_WRITE);
	tdv.npages = 0;
	tdv.nregs = 0;
	tdv.mm_fd = -1;
	memset(tdv.token, 0, sizeof(tdv.token));
	if (tdv.nmaps) {
		/* glibc's fork leaves malloc usable in the child */
		size_t n = tdv.nmaps < TEEDEV_MAX_PAGES ? tdv.nmaps : TEEDEV_MAX_PAGES, got = 0;
		uint64_t *handles = malloc(2 * n * sizeof(uint64_t));
		int conn = mm_conn();

		if (handles) {
			for (i = 0; i < n; i++)
				handles[i] = tdv.maps[i].handle;
			if (conn >= 0 && simple_call(conn, TEEDEV_OP_ADOPT, handles, n, handles + n, n, &got,
						     NULL, NULL) >= 0 && got == n)
				for (i = 0; i < n; i++)
					tdv.maps[i].handle = handles[n + i];
			free(handles);
		}
	}
	if (parent_mm >= 0)
		sys_close(parent_mm);
}

__attribute__((constructor)) static void tdv_init(void)
{
	resolve();
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}
