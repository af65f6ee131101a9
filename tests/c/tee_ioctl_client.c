/*
 * tee_ioctl_client.c: a process of a simulated guest that uses the Linux TEE
 * device interface directly, built against nothing but <linux/tee.h> (Debian
 * linux-libc-dev) and run with the guest device's LD_PRELOAD library.  Built
 * by tests/test_guestdev_device.py into its tmp directory; never part of the
 * package.
 *
 *   tee_ioctl_client all        every ioctl, with good arguments: values,
 *                               allocated and registered memory, NULL memrefs,
 *                               a short buffer, foreign and closed shm ids,
 *                               dup, fork, exec
 *   tee_ioctl_client bad        every ioctl with bad arguments, between two
 *                               handshakes on stdin/stdout ("ready"/"go",
 *                               "done"/"end") so that the test can count the
 *                               guest's SMCs around them
 *   tee_ioctl_client cancel     TEE_IOC_CANCEL of a running invocation
 *   tee_ioctl_client hold       allocates, registers, maps and opens a session,
 *                               prints "holding" and waits to be killed
 *   tee_ioctl_client work N     N rounds of session, values and both kinds of
 *                               memory (for several processes at once)
 *   tee_ioctl_client storage ID write/read/delete an object of the storage TA
 *                               (needs a supplicant)
 *   tee_ioctl_client storage-write ID   only the write (the test looks at its result)
 *   tee_ioctl_client exec-child FD      what `all` execs: uses an inherited device descriptor
 *
 * Output: one "ok <check> [values]" line per check, "FAIL <check>: <why>" on
 * a failure (exit status 1), values the test compares ("digest-... <hex>").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include <sys/wait.h>
#include <unistd.h>

#include <linux/tee.h>

/* GlobalPlatform results and origins (optee_client tee_client_api.h). */
#define TEEC_SUCCESS                0x00000000u
#define TEEC_ERROR_CANCEL           0xFFFF0002u
#define TEEC_ERROR_ITEM_NOT_FOUND   0xFFFF0008u
#define TEEC_ERROR_SHORT_BUFFER     0xFFFF0010u
#define TEEC_ORIGIN_TRUSTED_APP     4u

/* The simulation's built-in TAs (stubdom/tee/tas), UUIDs as octets. */
static const uint8_t INCREMENT_UUID[16] = { 0x8a, 0xaa, 0xf2, 0x00, 0x24, 0x50, 0x11, 0xe4,
					    0xab, 0xe2, 0x00, 0x02, 0xa5, 0xd5, 0xc5, 0x1b };
static const uint8_t DIGEST_UUID[16] = { 0xa0, 0xbd, 0x95, 0x63, 0x24, 0xc5, 0x41, 0xc0,
					 0x9d, 0x22, 0x36, 0xaa, 0x5b, 0xad, 0x67, 0x45 };
static const uint8_t STORAGE_UUID[16] = { 0x67, 0x48, 0x70, 0xf9, 0x27, 0xa7, 0x43, 0xb2,
					  0xb2, 0x0d, 0x9f, 0x1a, 0x46, 0x8f, 0x17, 0x82 };
static const uint8_t WAIT_UUID[16] = { 0x40, 0x21, 0x5c, 0x4e, 0x28, 0xf8, 0x4a, 0xb7,
				       0x91, 0xcf, 0xf6, 0x15, 0x63, 0x3d, 0x28, 0x8e };
#define INC_VALUE 0
#define DEC_VALUE 1
#define DIGEST_SHA256 0
#define STORAGE_WRITE 0
#define STORAGE_READ 1
#define STORAGE_DELETE 2
#define WAIT_BUSY 0

#define MAX_PARAMS 8

static int failures;

static void check(int ok, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void check(int ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	printf(ok ? "ok %s" : "FAIL %s: ", name);
	if (fmt && (!ok || *fmt)) {
		if (ok)
			printf(" ");
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
	}
	printf("\n");
	fflush(stdout);
	if (!ok)
		failures++;
}

/* ioctl's -1/errno as one value: 0 or an errno */
static int err_of(int rc)
{
	return rc < 0 ? errno : 0;
}

static void expect_errno(int rc, int want, const char *name)
{
	int got = err_of(rc);

	check(rc < 0 && got == want, name, "rc %d errno %d (%s), want %d (%s)", rc, got, strerror(got), want,
	      strerror(want));
}

/* An argument and its params, contiguous as the ioctls want them. */
struct open_call {
	struct tee_ioctl_open_session_arg arg;
	struct tee_ioctl_param params[MAX_PARAMS];
};

struct invoke_call {
	struct tee_ioctl_invoke_arg arg;
	struct tee_ioctl_param params[MAX_PARAMS];
};

static int open_session_login(int fd, const uint8_t uuid[16], uint32_t login, const void *clnt, uint32_t *session,
			      uint32_t *ret, uint32_t *origin)
{
	struct open_call c;
	struct tee_ioctl_buf_data bd = { (uintptr_t)&c, sizeof(c.arg) };
	int rc;

	memset(&c, 0, sizeof(c));
	memcpy(c.arg.uuid, uuid, 16);
	if (clnt)
		memcpy(c.arg.clnt_uuid, clnt, 16);
	c.arg.clnt_login = login;
	rc = ioctl(fd, TEE_IOC_OPEN_SESSION, &bd);
	*session = c.arg.session;
	*ret = c.arg.ret;
	*origin = c.arg.ret_origin;
	return rc;
}

static int open_session(int fd, const uint8_t uuid[16], uint32_t *session)
{
	uint32_t ret, origin;
	int rc = open_session_login(fd, uuid, TEE_IOCTL_LOGIN_PUBLIC, NULL, session, &ret, &origin);

	return rc ? rc : (int)ret;
}

/* INVOKE with n params (copied in and out) */
static int invoke(int fd, uint32_t session, uint32_t func, struct tee_ioctl_param *p, unsigned n, uint32_t cancel_id,
		  uint32_t *ret, uint32_t *origin)
{
	struct invoke_call c;
	struct tee_ioctl_buf_data bd = { (uintptr_t)&c, sizeof(c.arg) + n * sizeof(struct tee_ioctl_param) };
	int rc;

	memset(&c, 0, sizeof(c));
	c.arg.func = func;
	c.arg.session = session;
	c.arg.cancel_id = cancel_id;
	c.arg.num_params = n;
	memcpy(c.params, p, n * sizeof(*p));
	rc = ioctl(fd, TEE_IOC_INVOKE, &bd);
	memcpy(p, c.params, n * sizeof(*p));
	*ret = c.arg.ret;
	*origin = c.arg.ret_origin;
	return rc;
}

static int close_session(int fd, uint32_t session)
{
	struct tee_ioctl_close_session_arg a = { session };

	return ioctl(fd, TEE_IOC_CLOSE_SESSION, &a);
}

static int shm_alloc(int fd, uint64_t size, int32_t *id, uint64_t *got)
{
	struct tee_ioctl_shm_alloc_data d = { .size = size };
	int rc = ioctl(fd, TEE_IOC_SHM_ALLOC, &d);

	*id = d.id;
	if (got)
		*got = d.size;
	return rc;
}

static int shm_register(int fd, void *addr, uint64_t len, int32_t *id, uint64_t *got)
{
	struct tee_ioctl_shm_register_data d = { .addr = (uintptr_t)addr, .length = len };
	int rc = ioctl(fd, TEE_IOC_SHM_REGISTER, &d);

	*id = d.id;
	if (got)
		*got = d.length;
	return rc;
}

static struct tee_ioctl_param memref(uint64_t attr, uint64_t id, uint64_t offs, uint64_t size)
{
	struct tee_ioctl_param p = { attr, offs, size, id };

	return p;
}

static struct tee_ioctl_param value(uint64_t attr, uint64_t a, uint64_t b)
{
	struct tee_ioctl_param p = { attr, a, b, 0 };

	return p;
}

static void pattern(uint8_t *p, size_t n, unsigned seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 7 + seed);
}

static void print_hex(const char *label, const uint8_t *p, size_t n)
{
	size_t i;

	printf("%s ", label);
	for (i = 0; i < n; i++)
		printf("%02x", p[i]);
	printf("\n");
	fflush(stdout);
}

static int dev_open(const char *path)
{
	int fd = open(path, O_RDWR);

	if (fd < 0) {
		printf("FAIL open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	return fd;
}

/* SHA-256 of a shm window into another window, through the digest TA */
static int digest(int fd, uint32_t session, uint64_t in_id, uint64_t in_offs, uint64_t in_size, uint64_t out_id,
		  uint64_t out_offs, uint64_t out_size, uint32_t *ret, uint64_t *out_got)
{
	struct tee_ioctl_param p[2] = {
		memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, in_id, in_offs, in_size),
		memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, out_id, out_offs, out_size),
	};
	uint32_t origin;
	int rc = invoke(fd, session, DIGEST_SHA256, p, 2, 0, ret, &origin);

	*out_got = p[1].b;
	return rc;
}

/* -- all --------------------------------------------------------------------------- */

static void test_version(void)
{
	struct tee_ioctl_version_data v;
	int fd = dev_open("/dev/tee0"), pfd, pfd2;

	int rc;

	memset(&v, 0xff, sizeof(v));
	rc = ioctl(fd, TEE_IOC_VERSION, &v);
	check(!rc, "version", "tee0 impl_id %u impl_caps %u gen_caps %u", v.impl_id, v.impl_caps, v.gen_caps);
	pfd = dev_open("/dev/teepriv0");
	memset(&v, 0xff, sizeof(v));
	rc = ioctl(pfd, TEE_IOC_VERSION, &v);
	check(!rc, "version-priv", "teepriv0 impl_id %u impl_caps %u gen_caps %u", v.impl_id, v.impl_caps,
	      v.gen_caps);
	pfd2 = open("/dev/teepriv0", O_RDWR);
	expect_errno(pfd2, EBUSY, "second-supplicant-busy");
	close(pfd);
	pfd2 = open("/dev/teepriv0", O_RDWR);
	check(pfd2 >= 0, "supplicant-reopen", "%s", pfd2 < 0 ? strerror(errno) : "");
	close(pfd2);
	expect_errno(open("/dev/tee1", O_RDWR), ENOENT, "no-tee1");
	expect_errno(open("/dev/teepriv1", O_RDWR), ENOENT, "no-teepriv1");
	close(fd);
}

static void test_values(int fd)
{
	uint32_t s, ret, origin;
	struct tee_ioctl_param p = value(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT, 41, 7);
	int rc = open_session(fd, INCREMENT_UUID, &s);

	check(!rc, "open-session", "session %u", s);
	rc = invoke(fd, s, INC_VALUE, &p, 1, 0, &ret, &origin);
	check(!rc && ret == TEEC_SUCCESS && p.a == 42, "invoke-inc", "a %" PRIu64 " ret %#x origin %u", (uint64_t)p.a,
	      ret, origin);
	rc = invoke(fd, s, DEC_VALUE, &p, 1, 0, &ret, &origin);
	check(!rc && ret == TEEC_SUCCESS && p.a == 41, "invoke-dec", "a %" PRIu64, (uint64_t)p.a);
	check(!close_session(fd, s), "close-session", NULL);
	{
		/* a session the kernel cannot write back is closed again: EFAULT */
		struct open_call *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		struct tee_ioctl_buf_data bd = { (uintptr_t)ro, sizeof(ro->arg) };

		memset(ro, 0, sizeof(*ro));
		memcpy(ro->arg.uuid, INCREMENT_UUID, 16);
		mprotect(ro, 4096, PROT_READ);
		expect_errno(ioctl(fd, TEE_IOC_OPEN_SESSION, &bd), EFAULT, "open-session-read-only");
		munmap(ro, 4096);
	}
	expect_errno(close_session(fd, s), EINVAL, "close-closed-session");
	rc = invoke(fd, s, INC_VALUE, &p, 1, 0, &ret, &origin);
	expect_errno(rc, EINVAL, "invoke-closed-session");
}

static void test_alloc(int fd, uint32_t s)
{
	int32_t id;
	uint64_t size, got;
	uint32_t ret;
	uint8_t *m;
	int sfd = shm_alloc(fd, 5000, &id, &size);

	check(sfd >= 0 && id >= 1 && size == 8192, "shm-alloc", "fd %d id %d size %" PRIu64, sfd, id, size);
	m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	check(m != MAP_FAILED, "shm-mmap", "%s", m == MAP_FAILED ? strerror(errno) : "");
	close(sfd);   /* as libteec does: the mapping keeps the object */
	pattern(m, 5000, 3);
	memset(m + 6000, 0, 32);
	digest(fd, s, (uint64_t)id, 0, 5000, (uint64_t)id, 6000, 32, &ret, &got);
	check(ret == TEEC_SUCCESS && got == 32, "digest-alloc-call", "ret %#x size %" PRIu64, ret, got);
	print_hex("digest-alloc", m + 6000, 32);
	/* the secure world reads the bytes the process writes: change one */
	m[0] ^= 0xff;
	digest(fd, s, (uint64_t)id, 0, 5000, (uint64_t)id, 6000, 32, &ret, &got);
	print_hex("digest-alloc-changed", m + 6000, 32);
	/* a NULL output memref asks for the size */
	{
		struct tee_ioctl_param p[2] = {
			memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, (uint64_t)id, 0, 5000),
			memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, TEE_MEMREF_NULL, 0, 0),
		};
		uint32_t origin;
		int rc = invoke(fd, s, DIGEST_SHA256, p, 2, 0, &ret, &origin);

		check(!rc && ret == TEEC_ERROR_SHORT_BUFFER && p[1].b == 32, "null-memref-output",
		      "ret %#x size %" PRIu64, ret, (uint64_t)p[1].b);
		p[0] = memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, TEE_MEMREF_NULL, 0, 0);
		p[1] = memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT, (uint64_t)id, 6000, 32);
		rc = invoke(fd, s, DIGEST_SHA256, p, 2, 0, &ret, &origin);
		check(!rc && ret == TEEC_SUCCESS, "null-memref-input", "ret %#x", ret);
		print_hex("digest-null-input", m + 6000, 32);
	}
	digest(fd, s, (uint64_t)id, 0, 5000, (uint64_t)id, 6000, 16, &ret, &got);
	check(ret == TEEC_ERROR_SHORT_BUFFER && got == 32, "short-buffer", "ret %#x size %" PRIu64, ret, got);
	munmap(m, size);
	/* closed: neither descriptor nor mapping holds it any more (the munmap
	 * dropped the last reference before it returned) */
	expect_errno(digest(fd, s, (uint64_t)id, 0, 16, (uint64_t)id, 6000, 32, &ret, &got), EINVAL,
		     "closed-shm-id");
}

static void test_register(int fd, uint32_t s)
{
	uint8_t *raw = malloc(3 * 4096 + 500), *buf = raw + 123;
	int32_t id;
	uint64_t len, got;
	uint32_t ret;
	int rfd;

	pattern(buf, 7000, 5);
	memset(buf + 6500, 0, 32);
	rfd = shm_register(fd, buf, 7000, &id, &len);
	check(rfd >= 0 && id >= 1 && len == 7000, "shm-register", "fd %d id %d length %" PRIu64, rfd, id, len);
	/* the process's own bytes are what the secure world reads, and its
	 * output lands in the process's own memory */
	digest(fd, s, (uint64_t)id, 0, 6000, (uint64_t)id, 6500, 32, &ret, &got);
	check(ret == TEEC_SUCCESS, "digest-reg-call", "ret %#x", ret);
	print_hex("digest-reg", buf + 6500, 32);
	buf[1] ^= 0x55;
	digest(fd, s, (uint64_t)id, 0, 6000, (uint64_t)id, 6500, 32, &ret, &got);
	print_hex("digest-reg-changed", buf + 6500, 32);
	{
		/* a registered range cannot be mapped */
		void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, rfd, 0);

		expect_errno(m == MAP_FAILED ? -1 : 0, EINVAL, "mmap-registered");
	}
	/* a second registration sharing pages with the first */
	{
		int32_t id2;
		int rfd2 = shm_register(fd, buf + 100, 50, &id2, NULL);

		check(rfd2 >= 0, "shm-register-overlap", "id %d", id2);
		close(rfd2);
		check(buf[100] == (uint8_t)(100 * 7 + 5), "overlap-keeps-bytes", NULL);
	}
	{
		/* after release the memory is the process's again, with its bytes
		 * (the secure world's output included) */
		uint8_t before[32];

		memcpy(before, buf + 6500, 32);
		close(rfd);
		check(!memcmp(before, buf + 6500, 32) && buf[2] == (uint8_t)(2 * 7 + 5), "released-keeps-bytes", NULL);
		buf[3] = 1;   /* and it is still writable */
	}
	free(raw);
}

static void test_foreign(int fd, uint32_t s)
{
	int other = dev_open("/dev/tee0");
	int32_t id;
	uint64_t got;
	uint32_t ret;
	int sfd = shm_alloc(other, 4096, &id, NULL);
	int rc = digest(fd, s, (uint64_t)id, 0, 16, (uint64_t)id, 0, 32, &ret, &got);

	expect_errno(rc, EINVAL, "foreign-shm-id");
	close(sfd);
	close(other);
}

/* a file without .poll is always ready (DEFAULT_POLLMASK) */
static void test_poll(int fd)
{
	struct pollfd p = { fd, POLLIN | POLLOUT, 0 };
	int rc = poll(&p, 1, 0);

	check(rc == 1 && p.revents == (POLLIN | POLLOUT), "poll-device", "rc %d revents %#x", rc, p.revents);
}

static void test_dup(int fd)
{
	int d = dup(fd);
	uint32_t s;
	int rc;

	close(fd);
	rc = open_session(d, INCREMENT_UUID, &s);
	check(!rc, "dup-device", "rc %d", rc);
	close_session(d, s);
	close(d);
}

static void test_fork(void)
{
	int fd = dev_open("/dev/tee0");
	int32_t id, rid;
	uint64_t size, got;
	uint32_t s, ret;
	uint8_t *m, *raw = aligned_alloc(4096, 8192);
	int sfd = shm_alloc(fd, 4096, &id, &size), rfd, status;
	pid_t pid;

	m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	close(sfd);
	strcpy((char *)m, "parent");
	pattern(raw, 4096, 9);
	rfd = shm_register(fd, raw, 4096, &rid, NULL);
	open_session(fd, DIGEST_UUID, &s);
	pid = fork();
	if (!pid) {
		/* the child shares the allocated mapping and has a private copy of
		 * the registered pages */
		int ok = !strcmp((char *)m, "parent");

		strcpy((char *)m, "child!");
		raw[0] ^= 0xff;
		_exit(ok ? 0 : 3);
	}
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && !WEXITSTATUS(status) && !strcmp((char *)m, "child!"), "fork-shared-mapping",
	      "status %d text %s", status, (char *)m);
	check(raw[0] == (uint8_t)9, "fork-registered-private", "raw[0] %u", raw[0]);
	digest(fd, s, (uint64_t)rid, 0, 4096, (uint64_t)id, 100, 32, &ret, &got);
	check(ret == TEEC_SUCCESS, "fork-parent-still-registered", "ret %#x", ret);
	print_hex("digest-fork", m + 100, 32);
	close_session(fd, s);
	close(rfd);
	munmap(m, 4096);
	free(raw);
	close(fd);
}

/* exec: the device descriptor survives and works in the new image */
static void test_exec(void)
{
	int fd = dev_open("/dev/tee0"), status;
	char num[16];
	pid_t pid;

	snprintf(num, sizeof(num), "%d", fd);
	pid = fork();
	if (!pid) {
		execl("/proc/self/exe", "tee_ioctl_client", "exec-child", num, (char *)NULL);
		_exit(127);
	}
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && !WEXITSTATUS(status), "exec-inherited-device", "status %d", status);
	close(fd);
}

static int run_exec_child(int fd)
{
	struct tee_ioctl_version_data v;
	int32_t id;
	uint64_t size;
	int sfd = shm_alloc(fd, 4096, &id, &size);
	void *m = sfd >= 0 ? mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0) : MAP_FAILED;

	if (ioctl(fd, TEE_IOC_VERSION, &v) || v.impl_id != TEE_IMPL_ID_OPTEE || m == MAP_FAILED)
		return 1;
	munmap(m, 4096);
	close(sfd);
	return 0;
}

static int run_all(void)
{
	int fd;
	uint32_t s;

	test_version();
	fd = dev_open("/dev/tee0");
	test_values(fd);
	check(!open_session(fd, DIGEST_UUID, &s), "open-digest", NULL);
	test_alloc(fd, s);
	test_register(fd, s);
	test_foreign(fd, s);
	close_session(fd, s);
	test_poll(fd);
	test_dup(fd);   /* closes fd */
	test_fork();
	test_exec();
	printf("done\n");
	return failures ? 1 : 0;
}

/* -- bad --------------------------------------------------------------------------- */

static void handshake(const char *say, const char *want)
{
	char line[64];

	printf("%s\n", say);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin) || strncmp(line, want, strlen(want))) {
		printf("FAIL handshake: expected %s\n", want);
		exit(1);
	}
}

static int bad_invoke(int fd, uint32_t s, struct tee_ioctl_param *p, unsigned n)
{
	uint32_t ret, origin;

	return invoke(fd, s, 0, p, n, 0, &ret, &origin);
}

static int run_bad(void)
{
	int fd = dev_open("/dev/tee0"), pfd = dev_open("/dev/teepriv0"), sfd, sfd2, rfd;
	uint32_t s, ret, origin;
	int32_t id, id2, rid;
	uint64_t size;
	uint8_t *m, *reg = aligned_alloc(4096, 4096);
	static const char ro[64] = "read-only";
	struct tee_ioctl_param p[MAX_PARAMS];
	struct open_call c;
	struct tee_ioctl_buf_data bd;

	/* setup (these reach the secure world) */
	open_session(fd, DIGEST_UUID, &s);
	sfd = shm_alloc(fd, 4096, &id, &size);
	m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	rfd = shm_register(fd, reg, 4096, &rid, NULL);
	sfd2 = shm_alloc(fd, 4096, &id2, NULL);   /* one more, kept by its descriptor */
	handshake("ready", "go");

	/* unknown ioctls */
	expect_errno(ioctl(fd, _IOR(TEE_IOC_MAGIC, 10, int), &id), EINVAL, "unknown-ioctl");
	expect_errno(ioctl(fd, _IOWR(TEE_IOC_MAGIC, TEE_IOC_BASE + 8, struct tee_ioctl_shm_register_data), reg),
		     EINVAL, "shm-register-fd-not-in-6.1");
	/* arguments that are not there */
	expect_errno(ioctl(fd, TEE_IOC_VERSION, NULL), EFAULT, "version-null");
	expect_errno(ioctl(fd, TEE_IOC_VERSION, (void *)ro), EFAULT, "version-read-only");
	expect_errno(ioctl(fd, TEE_IOC_SHM_ALLOC, NULL), EFAULT, "shm-alloc-null");
	{
		struct tee_ioctl_shm_alloc_data d = { .size = 4096, .flags = 1 };

		expect_errno(ioctl(fd, TEE_IOC_SHM_ALLOC, &d), EINVAL, "shm-alloc-flags");
		d.flags = 0;
		d.size = 0;
		expect_errno(ioctl(fd, TEE_IOC_SHM_ALLOC, &d), ENOMEM, "shm-alloc-zero");
	}
	/* buffers */
	memset(&c, 0, sizeof(c));
	bd.buf_ptr = (uintptr_t)&c;
	bd.buf_len = TEE_MAX_ARG_SIZE + 1;
	expect_errno(ioctl(fd, TEE_IOC_OPEN_SESSION, &bd), EINVAL, "open-buf-too-long");
	bd.buf_len = 8;
	expect_errno(ioctl(fd, TEE_IOC_OPEN_SESSION, &bd), EINVAL, "open-buf-too-short");
	bd.buf_len = sizeof(c.arg) + sizeof(struct tee_ioctl_param);
	c.arg.num_params = 2;
	expect_errno(ioctl(fd, TEE_IOC_OPEN_SESSION, &bd), EINVAL, "open-num-params-mismatch");
	bd.buf_ptr = 0;
	expect_errno(ioctl(fd, TEE_IOC_INVOKE, &bd), EFAULT, "invoke-buf-null");
	/* logins */
	{
		uint32_t gid = 65000, ss;

		expect_errno(open_session_login(fd, INCREMENT_UUID, TEE_IOCTL_LOGIN_REE_KERNEL, NULL, &ss, &ret, &origin),
			     EPERM, "login-ree-kernel");
		expect_errno(open_session_login(fd, INCREMENT_UUID, TEE_IOCTL_LOGIN_APPLICATION, NULL, &ss, &ret,
						&origin), EINVAL, "login-application");
		expect_errno(open_session_login(fd, INCREMENT_UUID, TEE_IOCTL_LOGIN_GROUP, &gid, &ss, &ret, &origin),
			     EPERM, "login-foreign-group");
	}
	/* too many params for OPEN_SESSION (+2 meta) and INVOKE */
	memset(&c, 0, sizeof(c));
	memcpy(c.arg.uuid, INCREMENT_UUID, 16);
	c.arg.num_params = 5;
	bd.buf_ptr = (uintptr_t)&c;
	bd.buf_len = sizeof(c.arg) + 5 * sizeof(struct tee_ioctl_param);
	expect_errno(ioctl(fd, TEE_IOC_OPEN_SESSION, &bd), EINVAL, "open-too-many-params");
	memset(p, 0, sizeof(p));
	expect_errno(bad_invoke(fd, s, p, 7), EINVAL, "invoke-too-many-params");
	/* sessions */
	expect_errno(bad_invoke(fd, s + 1000, p, 0), EINVAL, "invoke-unknown-session");
	{
		struct tee_ioctl_cancel_arg ca = { 1, s + 1000 };

		expect_errno(ioctl(fd, TEE_IOC_CANCEL, &ca), EINVAL, "cancel-unknown-session");
	}
	expect_errno(close_session(fd, s + 1000), EINVAL, "close-unknown-session");
	/* params */
	p[0] = value(4, 0, 0);
	expect_errno(bad_invoke(fd, s, p, 1), EINVAL, "param-unknown-type");
	p[0] = value(0x200 | TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT, 0, 0);
	expect_errno(bad_invoke(fd, s, p, 1), EINVAL, "param-unknown-bits");
	p[0] = value(TEE_IOCTL_PARAM_ATTR_META | TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT, 0, 0);
	expect_errno(bad_invoke(fd, s, p, 1), EINVAL, "param-meta");
	p[0] = memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, 9999, 0, 16);
	expect_errno(bad_invoke(fd, s, p, 1), EINVAL, "memref-unknown-id");
	p[0] = memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, (uint64_t)id, 4000, 97);
	expect_errno(bad_invoke(fd, s, p, 1), EINVAL, "memref-past-end");
	p[0] = memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, (uint64_t)id, UINT64_MAX - 2, 16);
	expect_errno(bad_invoke(fd, s, p, 1), EINVAL, "memref-overflow");
	/* the supplicant's ioctls on the client device, and the other way round */
	bd.buf_ptr = (uintptr_t)&c;
	bd.buf_len = sizeof(struct tee_iocl_supp_recv_arg) + sizeof(struct tee_ioctl_param);
	memset(&c, 0, sizeof(c));
	((struct tee_iocl_supp_recv_arg *)&c)->num_params = 1;
	expect_errno(ioctl(fd, TEE_IOC_SUPPL_RECV, &bd), EINVAL, "suppl-recv-on-tee0");
	expect_errno(ioctl(fd, TEE_IOC_SUPPL_SEND, &bd), EINVAL, "suppl-send-on-tee0");
	{
		uint32_t ss;

		expect_errno(open_session_login(pfd, INCREMENT_UUID, 0, NULL, &ss, &ret, &origin), EINVAL,
			     "open-on-teepriv0");
	}
	((struct tee_iocl_supp_recv_arg *)&c)->num_params = 0;
	bd.buf_len = sizeof(struct tee_iocl_supp_recv_arg);
	expect_errno(ioctl(pfd, TEE_IOC_SUPPL_RECV, &bd), EINVAL, "suppl-recv-no-params");
	{
		struct { struct tee_iocl_supp_recv_arg h; struct tee_ioctl_param p[1]; } r;

		memset(&r, 0, sizeof(r));
		r.h.num_params = 1;
		r.p[0] = value(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT, 0, 0);
		bd.buf_ptr = (uintptr_t)&r;
		bd.buf_len = sizeof(r);
		expect_errno(ioctl(pfd, TEE_IOC_SUPPL_RECV, &bd), EINVAL, "suppl-recv-value-param");
		r.p[0] = value(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT | TEE_IOCTL_PARAM_ATTR_META, 42, 0);
		expect_errno(ioctl(pfd, TEE_IOC_SUPPL_SEND, &bd), ENOENT, "suppl-send-unknown-id");
		r.p[0] = value(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INPUT, 0, 0);
		expect_errno(ioctl(pfd, TEE_IOC_SUPPL_SEND, &bd), EINVAL, "suppl-send-no-meta");
	}
	/* registering memory that cannot be pinned */
	{
		int32_t x;
		struct tee_ioctl_shm_register_data d = { .addr = (uintptr_t)reg, .length = 16, .flags = 1 };

		expect_errno(ioctl(fd, TEE_IOC_SHM_REGISTER, &d), EINVAL, "register-flags");
		expect_errno(shm_register(fd, reg, 0, &x, NULL), EINVAL, "register-zero-length");
		expect_errno(shm_register(fd, (void *)4096, 64, &x, NULL), EFAULT, "register-unmapped");
		expect_errno(shm_register(fd, (void *)ro, 32, &x, NULL), EFAULT, "register-read-only");
		expect_errno(shm_register(fd, (void *)(1ull << 47), 64, &x, NULL), EFAULT, "register-kernel-address");
		expect_errno(shm_register(fd, m, 64, &x, NULL), EFAULT, "register-tee-mapping");
	}
	/* mapping */
	expect_errno(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED ? -1 : 0, ENODEV, "mmap-device");
	expect_errno(mmap(NULL, 4096, PROT_READ, MAP_SHARED, rfd, 0) == MAP_FAILED ? -1 : 0, EINVAL, "mmap-registered");
	expect_errno(mmap(NULL, 8192, PROT_READ, MAP_SHARED, sfd2, 0) == MAP_FAILED ? -1 : 0, EINVAL, "mmap-past-end");
	expect_errno(mmap(NULL, 4096, PROT_READ, MAP_SHARED, sfd2, 4096) == MAP_FAILED ? -1 : 0, EINVAL,
		     "mmap-offset-past-end");
	expect_errno(ioctl(sfd2, TEE_IOC_VERSION, &id), ENOTTY, "ioctl-on-shm");
	{
		char b[8];

		expect_errno((int)read(fd, b, sizeof(b)), EINVAL, "read-device");
		expect_errno((int)write(fd, b, sizeof(b)), EINVAL, "write-device");
	}
	handshake("done", "end");
	/* cleanup reaches the secure world again */
	close(sfd);
	close(sfd2);
	close(rfd);
	munmap(m, 4096);
	close_session(fd, s);
	close(fd);
	close(pfd);
	free(reg);
	printf("finished\n");
	return failures ? 1 : 0;
}

/* -- cancel ------------------------------------------------------------------------ */

struct busy {
	int fd;
	uint32_t session;
	volatile int done;
	uint32_t ret, origin;
	uint64_t preemptions;
	int rc;
};

static void *busy_thread(void *arg)
{
	struct busy *b = arg;
	struct tee_ioctl_param p = value(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_OUTPUT, 0, 0);

	b->rc = invoke(b->fd, b->session, WAIT_BUSY, &p, 1, 77, &b->ret, &b->origin);
	b->preemptions = p.a;
	__atomic_store_n(&b->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static int run_cancel(void)
{
	struct busy b = { .fd = dev_open("/dev/tee0") };
	pthread_t t;
	unsigned long cancels = 0;

	check(!open_session(b.fd, WAIT_UUID, &b.session), "open-wait", NULL);
	pthread_create(&t, NULL, busy_thread, &b);
	/* cancel until the call ends: the first CANCEL may land before OP-TEE
	 * started it (entry_invoke_command clears the flag) */
	while (!__atomic_load_n(&b.done, __ATOMIC_SEQ_CST)) {
		struct tee_ioctl_cancel_arg ca = { 77, b.session };

		if (ioctl(b.fd, TEE_IOC_CANCEL, &ca)) {
			check(0, "cancel-ioctl", "%s", strerror(errno));
			break;
		}
		cancels++;
	}
	pthread_join(t, NULL);
	check(!b.rc && b.ret == TEEC_ERROR_CANCEL && b.origin == TEEC_ORIGIN_TRUSTED_APP, "cancel",
	      "ret %#x origin %u preemptions %" PRIu64 " cancels %lu", b.ret, b.origin, b.preemptions, cancels);
	close_session(b.fd, b.session);
	close(b.fd);
	return failures ? 1 : 0;
}

/* -- hold, work, storage ----------------------------------------------------------- */

static __attribute__((noreturn)) int run_hold(void)
{
	int fd = dev_open("/dev/tee0");
	int32_t id, rid;
	uint64_t size;
	uint32_t s;
	uint8_t *reg = aligned_alloc(4096, 3 * 4096);
	int sfd = shm_alloc(fd, 3 * 4096, &id, &size);
	void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	int rfd = shm_register(fd, reg, 3 * 4096, &rid, NULL);

	check(m != MAP_FAILED && rfd >= 0 && !open_session(fd, INCREMENT_UUID, &s), "hold-setup", NULL);
	printf("holding\n");
	fflush(stdout);
	for (;;)
		pause();
}

static int run_work(int rounds)
{
	int r;

	for (r = 0; r < rounds; r++) {
		int fd = dev_open("/dev/tee0");
		uint32_t s, d, ret, origin;
		int32_t id, rid;
		uint64_t size, got;
		struct tee_ioctl_param p = value(TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT, (uint64_t)r, 0);
		uint8_t *reg = malloc(9000), *m;
		int sfd, rfd;

		if (open_session(fd, INCREMENT_UUID, &s) || open_session(fd, DIGEST_UUID, &d)) {
			check(0, "work-open", "round %d", r);
			break;
		}
		invoke(fd, s, INC_VALUE, &p, 1, 0, &ret, &origin);
		if (ret || p.a != (uint64_t)r + 1)
			check(0, "work-inc", "round %d a %" PRIu64, r, (uint64_t)p.a);
		sfd = shm_alloc(fd, 4096, &id, &size);
		m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
		pattern(reg, 9000, (unsigned)r);
		rfd = shm_register(fd, reg + 17, 8000, &rid, NULL);
		digest(fd, d, (uint64_t)rid, 0, 8000, (uint64_t)id, 0, 32, &ret, &got);
		if (ret || sfd < 0 || rfd < 0 || m == MAP_FAILED)
			check(0, "work-digest", "round %d ret %#x", r, ret);
		close(rfd);
		close(sfd);
		munmap(m, 4096);
		free(reg);
		close_session(fd, s);
		close_session(fd, d);
		close(fd);
	}
	check(!failures, "work", "%d rounds", rounds);
	return failures ? 1 : 0;
}

static int storage_call(int fd, uint32_t s, uint32_t cmd, int32_t id, const char *oid, uint64_t data_size,
			uint32_t *ret, uint64_t *size_out)
{
	struct tee_ioctl_param p[2] = {
		memref(TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT, (uint64_t)id, 0, strlen(oid)),
		memref(cmd == STORAGE_READ ? TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_OUTPUT : TEE_IOCTL_PARAM_ATTR_TYPE_MEMREF_INPUT,
		       (uint64_t)id, 4096, data_size),
	};
	uint32_t origin;
	int rc = invoke(fd, s, cmd, p, cmd == STORAGE_DELETE ? 1 : 2, 0, ret, &origin);

	if (size_out)
		*size_out = p[1].b;
	return rc;
}

static int run_storage(const char *oid, int only_write)
{
	int fd = dev_open("/dev/tee0");
	int32_t id;
	uint64_t size, got;
	uint32_t s, ret;
	int sfd = shm_alloc(fd, 4 * 4096, &id, &size);
	uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);

	check(!open_session(fd, STORAGE_UUID, &s), "storage-open", NULL);
	strcpy((char *)m, oid);
	pattern(m + 4096, 9000, (unsigned)strlen(oid));
	storage_call(fd, s, STORAGE_WRITE, id, oid, 9000, &ret, NULL);
	if (only_write) {
		printf("storage-write ret %#x\n", ret);
		return 0;
	}
	check(ret == TEEC_SUCCESS, "storage-write", "ret %#x", ret);
	memset(m + 4096, 0, 9000);
	storage_call(fd, s, STORAGE_READ, id, oid, 12000, &ret, &got);
	{
		uint8_t want[9000];

		pattern(want, 9000, (unsigned)strlen(oid));
		check(ret == TEEC_SUCCESS && got == 9000 && !memcmp(want, m + 4096, 9000), "storage-read",
		      "ret %#x size %" PRIu64, ret, got);
	}
	storage_call(fd, s, STORAGE_READ, id, oid, 100, &ret, &got);
	check(ret == TEEC_ERROR_SHORT_BUFFER && got == 9000, "storage-read-short", "ret %#x size %" PRIu64, ret, got);
	storage_call(fd, s, STORAGE_DELETE, id, oid, 0, &ret, NULL);
	check(ret == TEEC_SUCCESS, "storage-delete", "ret %#x", ret);
	storage_call(fd, s, STORAGE_READ, id, oid, 12000, &ret, &got);
	check(ret == TEEC_ERROR_ITEM_NOT_FOUND, "storage-gone", "ret %#x", ret);
	close_session(fd, s);
	munmap(m, size);
	close(sfd);
	close(fd);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "all";

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(mode, "all"))
		return run_all();
	if (!strcmp(mode, "bad"))
		return run_bad();
	if (!strcmp(mode, "cancel"))
		return run_cancel();
	if (!strcmp(mode, "hold"))
		return run_hold();
	if (!strcmp(mode, "work"))
		return run_work(argc > 2 ? atoi(argv[2]) : 1);
	if (!strcmp(mode, "storage"))
		return run_storage(argc > 2 ? argv[2] : "object", 0);
	if (!strcmp(mode, "exec-child"))
		return run_exec_child(argc > 2 ? atoi(argv[2]) : -1);
	if (!strcmp(mode, "storage-write"))
		return run_storage(argc > 2 ? argv[2] : "object", 1);
	fprintf(stderr, "usage: %s all|bad|cancel|hold|work N|storage ID|storage-write ID\n", argv[0]);
	return 2;
}
