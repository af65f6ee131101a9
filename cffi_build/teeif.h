/*
 * teeif: the shared ring between a domain's OP-TEE frontend (the trap path in
 * the platform) and its backend (stubdom-teed). Layout: Xen's public
 * io/ring.h with DEFINE_RING_TYPES(teeif, struct teeif_request,
 * struct teeif_response). See docs/protocol.md.
 *
 * This header is the cdef of the cffi module ring._ring: plain declarations
 * only, no macros or preprocessor conditionals.
 */

struct teeif_request {          /* 80 bytes */
    uint64_t id;                /* chosen by the frontend, echoed back */
    uint32_t vcpu;              /* the vCPU that trapped */
    uint32_t flags;             /* 0 */
    uint64_t a[8];              /* x0..x7 at the trap */
};

struct teeif_response {         /* 80 bytes */
    uint64_t id;                /* the request's id */
    int32_t  status;            /* 0, or a negative errno from the backend */
    uint32_t flags;             /* 0 */
    uint64_t a[8];              /* x0..x7 the vCPU resumes with */
};

/* The io/ring.h shared header; entries follow at offset 64. */
struct teeif_sring_hdr {
    uint32_t req_prod;
    uint32_t req_event;
    uint32_t rsp_prod;
    uint32_t rsp_event;
    uint8_t  pvt[4];
    uint8_t  pad[44];
};

#define TEEIF_RING_HDR_SIZE 64
#define TEEIF_ENTRY_SIZE 80
