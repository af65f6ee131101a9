/*
 * tee_mini_supplicant.c: a small tee-supplicant for a simulated guest, built
 * against nothing but <linux/tee.h> (Debian linux-libc-dev) and run with the
 * guest device's LD_PRELOAD library.  Built by tests/test_guestdev_device.py;
 * never part of the package.
 *
 *   tee_mini_supplicant ROOT [THREADS] [die-on-request N] [ta-dir DIR]
 *
 * Opens /dev/teepriv0 and serves OP-TEE's requests with THREADS threads
 * (default 2), each waiting in TEE_IOC_SUPPL_RECV with a meta parameter and
 * answering with TEE_IOC_SUPPL_SEND, as tee-supplicant does:
 *
 *   OPTEE_RPC_CMD_SHM_ALLOC  page-aligned memory of its own, registered with
 *                            TEE_IOC_SHM_REGISTER (the device has REG_MEM)
 *   OPTEE_RPC_CMD_SHM_FREE   closes the registration, frees the memory
 *   OPTEE_RPC_CMD_FS         OPEN, CREATE, CLOSE, READ, WRITE, TRUNCATE, REMOVE
 *                            on files under ROOT
 *   OPTEE_RPC_CMD_LOAD_TA    DIR/<uuid>.ta, as tee-supplicant's load_ta: no
 *                            buffer -> its size; a buffer too small ->
 *                            TEEC_ERROR_SHORT_BUFFER; no file (or no DIR) ->
 *                            TEEC_ERROR_ITEM_NOT_FOUND
 *   anything else            TEEC_ERROR_NOT_SUPPORTED
 *
 * Prints "serving" once the device is open, one "request <cmd>" line per
 * request.  "die-on-request N" exits (status 0) on receiving the N-th request
 * without answering it, the way a supplicant that crashed mid-request goes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/tee.h>

/* OP-TEE's RPC commands to tee-supplicant (optee_os optee_rpc_cmd.h). */
#define OPTEE_RPC_CMD_LOAD_TA   0
#define OPTEE_RPC_CMD_FS        2
#define OPTEE_RPC_CMD_SHM_ALLOC 6
#define OPTEE_RPC_CMD_SHM_FREE  7
#define OPTEE_RPC_SHM_TYPE_APPL 0
#define OPTEE_RPC_FS_OPEN       0
#define OPTEE_RPC_FS_CREATE     1
#define OPTEE_RPC_FS_CLOSE      2
#define OPTEE_RPC_FS_READ       3
#define OPTEE_RPC_FS_WRITE      4
#define OPTEE_RPC_FS_TRUNCATE   5
#define OPTEE_RPC_FS_REMOVE     6

/* GlobalPlatform results (optee_client tee_client_api.h). */
#define TEEC_SUCCESS              0x00000000u
#define TEEC_ERROR_GENERIC        0xFFFF0000u
#define TEEC_ERROR_BAD_PARAMETERS 0xFFFF0006u
#define TEEC_ERROR_ITEM_NOT_FOUND 0xFFFF0008u
#define TEEC_ERROR_NOT_SUPPORTED  0xFFFF000Au
#define TEEC_ERROR_OUT_OF_MEMORY  0xFFFF000Cu
#define TEEC_ERROR_SHORT_BUFFER   0xFFFF0010u

#define NUM_PARAMS 5   /* tee-supplicant's RPC_NUM_PARAMS */
#define MAX_SHM 64

static int dev_fd;
static const char *root;
static const char *ta_dir;
static long die_on = -1;
static long received;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct shm {
	int32_t id;
	int fd;
	void *p;
	size_t size;
} shms[MAX_SHM];

struct msg {
	union {
		struct tee_iocl_supp_recv_arg recv;
		struct tee_iocl_supp_send_arg send;
	} h;
	struct tee_ioctl_param p[NUM_PARAMS];
};

static struct shm *find_shm(int32_t id)
{
	int i;

	for (i = 0; i < MAX_SHM; i++)
		if (shms[i].p && shms[i].id == id)
			return &shms[i];
	return NULL;
}

/* the bytes a memref param names, checked against the buffer's size */
static void *memref_va(struct tee_ioctl_param *p, size_t *size)
{
	struct shm *s;
	void *va = NULL;

	pthread_mutex_lock(&lock);
	s = find_shm((int32_t)p->c);
	if (s && p->a + p->b >= p->a && p->a + p->b <= s->size)
		va = (uint8_t *)s->p + p->a;
	pthread_mutex_unlock(&lock);
	*size = p->b;
	return va;
}

static uint32_t shm_alloc(struct tee_ioctl_param *p, unsigned n)
{
	struct tee_ioctl_shm_register_data d;
	size_t size;
	void *buf;
	int i, fd;

	if (n != 1 || p[0].a != OPTEE_RPC_SHM_TYPE_APPL)
		return TEEC_ERROR_BAD_PARAMETERS;
	size = (p[0].b + 4095) & ~(size_t)4095;
	if (posix_memalign(&buf, 4096, size ? size : 4096))
		return TEEC_ERROR_OUT_OF_MEMORY;
	memset(&d, 0, sizeof(d));
	d.addr = (uintptr_t)buf;
	d.length = p[0].b;
	fd = ioctl(dev_fd, TEE_IOC_SHM_REGISTER, &d);
	if (fd < 0) {
		free(buf);
		return TEEC_ERROR_OUT_OF_MEMORY;
	}
	pthread_mutex_lock(&lock);
	for (i = 0; i < MAX_SHM && shms[i].p; i++)
		;
	if (i == MAX_SHM) {
		pthread_mutex_unlock(&lock);
		close(fd);
		free(buf);
		return TEEC_ERROR_OUT_OF_MEMORY;
	}
	shms[i] = (struct shm){ d.id, fd, buf, p[0].b };
	pthread_mutex_unlock(&lock);
	p[0].c = (uint64_t)d.id;
	return TEEC_SUCCESS;
}

static uint32_t shm_free(struct tee_ioctl_param *p, unsigned n)
{
	struct shm *s, copy;

	if (n != 1)
		return TEEC_ERROR_BAD_PARAMETERS;
	pthread_mutex_lock(&lock);
	s = find_shm((int32_t)p[0].b);
	if (s) {
		copy = *s;
		s->p = NULL;
	}
	pthread_mutex_unlock(&lock);
	if (!s)
		return TEEC_ERROR_BAD_PARAMETERS;
	close(copy.fd);   /* before the memory goes back: it is registered */
	free(copy.p);
	return TEEC_SUCCESS;
}

static int path_of(struct tee_ioctl_param *p, char *out, size_t cap)
{
	size_t size;
	char *name = memref_va(p, &size);

	if (!name || !size || strnlen(name, size) == size || strstr(name, ".."))
		return -1;
	return snprintf(out, cap, "%s/%s", root, name) >= (int)cap ? -1 : 0;
}

static void make_parents(char *path)
{
	char *s;

	for (s = strchr(path + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = 0;
		mkdir(path, 0700);
		*s = '/';
	}
}

static uint32_t fs(struct tee_ioctl_param *p, unsigned n)
{
	char path[PATH_MAX];
	size_t size;
	void *va;
	ssize_t got;
	int fd;

	if (!n)
		return TEEC_ERROR_BAD_PARAMETERS;
	switch (p[0].a) {
	case OPTEE_RPC_FS_OPEN:
	case OPTEE_RPC_FS_CREATE:
		if (n != 3 || path_of(&p[1], path, sizeof(path)))
			return TEEC_ERROR_BAD_PARAMETERS;
		if (p[0].a == OPTEE_RPC_FS_CREATE) {
			make_parents(path);
			fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		} else {
			fd = open(path, O_RDWR);
		}
		if (fd < 0)
			return errno == ENOENT ? TEEC_ERROR_ITEM_NOT_FOUND : TEEC_ERROR_GENERIC;
		p[2].a = (uint64_t)fd;
		return TEEC_SUCCESS;
	case OPTEE_RPC_FS_CLOSE:
		return close((int)p[0].b) ? TEEC_ERROR_GENERIC : TEEC_SUCCESS;
	case OPTEE_RPC_FS_READ:
		va = n == 2 ? memref_va(&p[1], &size) : NULL;
		if (!va)
			return TEEC_ERROR_BAD_PARAMETERS;
		got = pread((int)p[0].b, va, size, (off_t)p[0].c);
		if (got < 0)
			return TEEC_ERROR_GENERIC;
		p[1].b = (uint64_t)got;
		return TEEC_SUCCESS;
	case OPTEE_RPC_FS_WRITE:
		va = n == 2 ? memref_va(&p[1], &size) : NULL;
		if (!va)
			return TEEC_ERROR_BAD_PARAMETERS;
		return pwrite((int)p[0].b, va, size, (off_t)p[0].c) == (ssize_t)size ? TEEC_SUCCESS
										       : TEEC_ERROR_GENERIC;
	case OPTEE_RPC_FS_TRUNCATE:
		return ftruncate((int)p[0].b, (off_t)p[0].c) ? TEEC_ERROR_GENERIC : TEEC_SUCCESS;
	case OPTEE_RPC_FS_REMOVE:
		if (n != 2 || path_of(&p[1], path, sizeof(path)))
			return TEEC_ERROR_BAD_PARAMETERS;
		if (unlink(path))
			return errno == ENOENT ? TEEC_ERROR_ITEM_NOT_FOUND : TEEC_ERROR_GENERIC;
		return TEEC_SUCCESS;
	default:
		return TEEC_ERROR_NOT_SUPPORTED;
	}
}

static uint32_t load_ta(struct tee_ioctl_param *p, unsigned n)
{
	char path[PATH_MAX];
	uint8_t u[16];
	size_t size = 0;
	void *va = NULL;
	FILE *f;
	long len;
	uint32_t ret = TEEC_SUCCESS;

	if (n != 2)
		return TEEC_ERROR_BAD_PARAMETERS;
	if (!ta_dir)
		return TEEC_ERROR_ITEM_NOT_FOUND;
	memcpy(u, &p[0].a, 8);      /* the UUID's octets, RFC 4122 order */
	memcpy(u + 8, &p[0].b, 8);
	snprintf(path, sizeof(path),
		 "%s/%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x.ta", ta_dir,
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
		 u[14], u[15]);
	f = fopen(path, "rb");
	if (!f)
		return TEEC_ERROR_ITEM_NOT_FOUND;
	if (fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		fclose(f);
		return TEEC_ERROR_ITEM_NOT_FOUND;
	}
	if ((int64_t)p[1].c != -1) {    /* a buffer (shm id -1: none, the size query) */
		va = memref_va(&p[1], &size);
		if (!va)
			ret = TEEC_ERROR_BAD_PARAMETERS;
		else if ((size_t)len > size)
			ret = TEEC_ERROR_SHORT_BUFFER;
		else if (fread(va, 1, (size_t)len, f) != (size_t)len)
			ret = TEEC_ERROR_ITEM_NOT_FOUND;
	}
	fclose(f);
	p[1].b = (uint64_t)len;
	return ret;
}

static void *serve(void *arg)
{
	(void)arg;
	for (;;) {
		struct msg m;
		struct tee_ioctl_buf_data bd = { (uintptr_t)&m, sizeof(m) };
		unsigned n;
		uint32_t ret, func;

		memset(&m, 0, sizeof(m));
		m.h.recv.num_params = NUM_PARAMS;
		m.p[0].attr = TEE_IOCTL_PARAM_ATTR_META;   /* requests are named: answer in any order */
		if (ioctl(dev_fd, TEE_IOC_SUPPL_RECV, &bd)) {
			fprintf(stderr, "TEE_IOC_SUPPL_RECV: %s\n", strerror(errno));
			exit(1);
		}
		func = m.h.recv.func;
		n = m.h.recv.num_params;
		if (!n || m.p[0].attr != (TEE_IOCTL_PARAM_ATTR_TYPE_VALUE_INOUT | TEE_IOCTL_PARAM_ATTR_META)) {
			fprintf(stderr, "no meta parameter in a request\n");
			exit(1);
		}
		pthread_mutex_lock(&lock);
		received++;
		if (received == die_on) {
			printf("dying on request %ld (cmd %u)\n", received, func);
			fflush(stdout);
			_exit(0);
		}
		pthread_mutex_unlock(&lock);
		printf("request %u\n", func);
		fflush(stdout);
		switch (func) {
		case OPTEE_RPC_CMD_SHM_ALLOC:
			ret = shm_alloc(m.p + 1, n - 1);
			break;
		case OPTEE_RPC_CMD_SHM_FREE:
			ret = shm_free(m.p + 1, n - 1);
			break;
		case OPTEE_RPC_CMD_FS:
			ret = fs(m.p + 1, n - 1);
			break;
		case OPTEE_RPC_CMD_LOAD_TA:
			ret = load_ta(m.p + 1, n - 1);
			break;
		default:
			ret = TEEC_ERROR_NOT_SUPPORTED;
		}
		/* the answer carries the same meta parameter first */
		m.h.send.ret = ret;
		m.h.send.num_params = n;
		bd.buf_len = sizeof(m.h) + n * sizeof(struct tee_ioctl_param);
		if (ioctl(dev_fd, TEE_IOC_SUPPL_SEND, &bd))
			fprintf(stderr, "TEE_IOC_SUPPL_SEND: %s\n", strerror(errno));
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct tee_ioctl_version_data v;
	int threads = 2, i;
	pthread_t t;

	if (argc < 2) {
		fprintf(stderr, "usage: %s ROOT [THREADS] [die-on-request N] [ta-dir DIR]\n", argv[0]);
		return 2;
	}
	root = argv[1];
	if (argc > 2)
		threads = atoi(argv[2]);
	for (i = 3; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "die-on-request"))
			die_on = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "ta-dir"))
			ta_dir = argv[i + 1];
	}
	dev_fd = open("/dev/teepriv0", O_RDWR);
	if (dev_fd < 0) {
		fprintf(stderr, "open /dev/teepriv0: %s\n", strerror(errno));
		return 1;
	}
	if (ioctl(dev_fd, TEE_IOC_VERSION, &v) || !(v.gen_caps & TEE_GEN_CAP_PRIVILEGED) ||
	    !(v.gen_caps & TEE_GEN_CAP_REG_MEM)) {
		fprintf(stderr, "not a supplicant device with REG_MEM: gen_caps %#x\n", v.gen_caps);
		return 1;
	}
	printf("serving\n");
	fflush(stdout);
	for (i = 1; i < threads; i++)
		pthread_create(&t, NULL, serve, NULL);
	serve(NULL);
	return 0;
}
