/*
 * teedev_wire.h - the device protocol between libstubdom_teedev.so (the
 * LD_PRELOAD library a process of a simulated guest runs with) and the
 * guest kernel's device server (stubdom.guestdev, `stubdom-teed guest-dev`).
 *
 * This header is the definition; stubdom/guestdev/wire.py mirrors it and
 * tests/test_guestdev_uapi.py compares the two.  docs/guest-dev.md describes
 * the protocol in prose.
 *
 * Transport: AF_UNIX SOCK_SEQPACKET, one message per datagram, host byte
 * order (both ends run on the same host).
 *
 *  - A process's open(2) of /dev/tee<N> or /dev/teepriv<N> is a connection
 *    to the device socket followed by TEEDEV_OP_OPEN; that connection is the
 *    open file from then on: dup(2), fork(2) and SCM_RIGHTS share it as they
 *    share a file, and the server releases the context when its last copy is
 *    closed (as Linux's tee_release runs on the file's last fput).
 *  - A shared-memory file descriptor (the return value of TEE_IOC_SHM_ALLOC
 *    and TEE_IOC_SHM_REGISTER) is one end of a socket pair the server made;
 *    it comes back with the ioctl's reply (SCM_RIGHTS).
 *  - A process's memory manager (its "mm": the pages it moved into the guest,
 *    the shared memory it maps) is one more connection, opened with
 *    TEEDEV_OP_MM_HELLO; its end is the process's end.
 *
 * Every request carries, as SCM_RIGHTS, one end of a fresh socket pair the
 * caller made for this call: the server answers there, learns the caller's
 * pid and credentials from it (SO_PEERCRED), and takes its end-of-file for
 * the caller's death (a killed process ends its waits in the guest kernel).
 */
#ifndef TEEDEV_WIRE_H
#define TEEDEV_WIRE_H

#include <stdint.h>

#define TEEDEV_MAGIC        0x76647374u  /* "tsdv" */
#define TEEDEV_WIRE_VERSION 1

/* Operations (struct teedev_req.op). */
#define TEEDEV_OP_OPEN      1  /* payload: device name ("tee0", "teepriv0"); cmd: open flags */
#define TEEDEV_OP_IOCTL     2  /* cmd: request; arg: argument; regions follow */
#define TEEDEV_OP_MMAP      3  /* cmd: prot; arg: page offset; len: length in bytes */
#define TEEDEV_OP_MM_HELLO  4  /* answered with the mm's token */
#define TEEDEV_OP_BACK      5  /* on the mm: payload uint64_t page addresses; answer: frames */
#define TEEDEV_OP_UNBACK    6  /* on the mm: payload uint64_t page addresses */
#define TEEDEV_OP_UNMAP     7  /* on the mm: payload uint64_t mapping handles */
#define TEEDEV_OP_ADOPT     8  /* on the mm: payload inherited handles; answer: new handles */
#define TEEDEV_OP_STATS     9  /* answered with a JSON object (statistics) */

#define TEEDEV_REGION_WRITABLE 1u

#define TEEDEV_MAX_MSG      (72u * 1024u)  /* either direction */
#define TEEDEV_MAX_REGIONS  4u
#define TEEDEV_MAX_PAGES    4096u          /* page addresses, frames or handles per message */

struct teedev_req {          /* 64 bytes, then payload */
	uint32_t magic;          /* TEEDEV_MAGIC */
	uint16_t version;        /* TEEDEV_WIRE_VERSION */
	uint16_t op;             /* TEEDEV_OP_* */
	uint64_t cmd;
	uint64_t arg;
	uint64_t len;
	uint8_t  token[16];      /* the caller's mm token; zero when it has none */
	uint32_t nregions;       /* IOCTL: struct teedev_region entries that follow */
	uint32_t npayload;       /* bytes of payload after the regions */
};

struct teedev_region {       /* 16 bytes, then len bytes padded to 8 */
	uint64_t addr;           /* where the bytes are in the caller */
	uint32_t len;
	uint32_t flags;          /* TEEDEV_REGION_WRITABLE */
};

struct teedev_rsp {          /* 48 bytes, then patches, then data */
	uint32_t magic;          /* TEEDEV_MAGIC */
	int32_t  ret;            /* >= 0: the call's result; < 0: -errno */
	uint32_t npatches;       /* struct teedev_patch entries that follow */
	uint32_t ndata;          /* bytes of data after the patches */
	uint64_t handle;         /* MMAP: the mapping's handle */
	uint8_t  token[16];      /* MM_HELLO: the token */
	uint64_t reserved;
};

struct teedev_patch {        /* 16 bytes, then len bytes padded to 8 */
	uint64_t addr;           /* write these bytes here in the caller */
	uint32_t len;
	uint32_t pad;
};

#endif /* TEEDEV_WIRE_H */
