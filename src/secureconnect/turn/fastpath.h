/* secureconnect.turn._fastpath: what its files share (the layout is in _fastpath.c's header).
 *
 * The constants, the counters' indexes, the structs of the tables and of the FastPath object,
 * small inline helpers on them (the hash mixer, address equality, the lookup by relay fd), and
 * the fp_ functions that cross files (defined in fastpath_tables.c, fastpath_wire.c and
 * fastpath_loop.c).
 * Everything else stays static in its file.
 */
#ifndef SECURECONNECT_FASTPATH_H
#define SECURECONNECT_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: pyconfig.h defines _GNU_SOURCE (recvmmsg, sendmmsg) */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MAGIC_COOKIE 0x2112A442u    /* RFC 8489 §5 */
#define FINGERPRINT_XOR 0x5354554Eu /* RFC 8489 §14.7 */
#define SEND_INDICATION 0x0016      /* RFC 8656 §17: Send (0x006), indication class */
#define DATA_INDICATION 0x0017      /* RFC 8656 §17: Data (0x007), indication class */
#define ATTR_XOR_PEER 0x0012        /* RFC 8656 §18.3 */
#define ATTR_DATA 0x0013            /* RFC 8656 §18.4 */
#define ATTR_DONT_FRAGMENT 0x001A   /* RFC 8656 §18.9 */
#define ATTR_FINGERPRINT 0x8028     /* RFC 8489 §14.7 */
/* relaypath._MAX_DATA_INDICATION_PAYLOAD: the largest DATA whose Data indication fits the
 * 16-bit STUN length (0xFFFC less XOR-PEER-ADDRESS for IPv6, 4 + 20, and DATA's header, 4). */
#define MAX_INDICATION_PAYLOAD (0xFFFC - 28)
#define HEADER_MAX 48   /* a Data indication's bytes before the payload: 20 + 4 + 20 + 4 */
#define MAX_BATCH 1024  /* UIO_MAXIOV: the kernel's cap on one recvmmsg/sendmmsg */
#define MAX_BUFFER 65536 /* a relayed UDP datagram may be up to 64 KiB */

/* ---- counters (docs/fastpath.md, the names of relaypath.RelayCounters) ------------------- */

/* The indexes of FastPath.counters; their names are counter_names in _fastpath.c. The first
 * N_TRAFFIC also index an entry's own traffic (FastPath.traffic). */
enum {
    TO_PEER_PACKETS, TO_PEER_BYTES, TO_CLIENT_PACKETS, TO_CLIENT_BYTES, DROP_NO_ALLOCATION,
    DROP_BAD_CHANNEL, DROP_NO_PERMISSION, DROP_BANDWIDTH, DROP_MALFORMED, DROP_OWN_PORT,
    SEND_ERRORS, N_COUNTERS
};
#define N_TRAFFIC 4 /* TO_PEER_PACKETS .. TO_CLIENT_BYTES */
_Static_assert(TO_PEER_BYTES == TO_PEER_PACKETS + 1 && TO_CLIENT_BYTES == TO_CLIENT_PACKETS + 1 &&
                   TO_CLIENT_BYTES + 1 == N_TRAFFIC,
               "a direction's bytes follow its packets (fastpath_wire.c's count_relayed)");

/* ---- tables ---------------------------------------------------------------------------- */

/* An IP address in binary: IPv4 in addr[0..3] and zeros after, so that equality is memcmp.
 * IPv4-mapped IPv6 stays IPv6 (family AF_INET6), as its text stays "::ffff:..." in Python. */
typedef struct { uint8_t addr[16]; uint16_t family; } ip_t;
typedef struct { ip_t ip; uint16_t port; } endpoint_t;

typedef struct {
    ip_t ip;
    double expires;      /* the core's clock */
    uint16_t *own_ports; /* the server's own service ports on this IP (RFC 8656 §21.1.2) */
    Py_ssize_t n_own;
} perm_t;

/* by_peer: this channel is what Python's channel_by_peer[peer] holds (dict semantics: the
 * last one bound to a peer, until that peer's key is popped). */
typedef struct { endpoint_t peer; double expires; uint16_t number, by_peer; } chan_t;

typedef struct entry {
    struct entry *next; /* the hash chain of (listener_fd, client), while the key names it */
    int relay_fd, listener_fd;
    int relay_family, listener_family; /* the sockets' families (getsockname), 0 if unknown */
    endpoint_t client;
    double budget; /* bytes that may still be relayed, both ways (inf: no cap) */
    /* this allocation's share of counters[0..N_TRAFFIC): counted beside them, per datagram, so
     * that reading them (FastPath.traffic) needs no per-datagram work beyond the increments */
    uint64_t traffic[N_TRAFFIC];
    perm_t *perms;
    Py_ssize_t n_perms, cap_perms;
    chan_t *chans;
    Py_ssize_t n_chans, cap_chans;
} entry_t;

typedef union { struct sockaddr sa; struct sockaddr_in v4; struct sockaddr_in6 v6; } sockaddr_u;

/* One outgoing datagram: [header] payload [padding], the payload still in a receive buffer. */
typedef struct {
    int fd, to_client;
    uint32_t size; /* the counted payload bytes, taken back if a datagram to a client fails */
    entry_t *entry; /* whose traffic counted it (entries are not freed while a drain runs) */
    uint8_t header[HEADER_MAX];
    sockaddr_u dest;
    struct iovec iov[3];
} out_t;

/* One message of a sendmmsg with UDP GSO: outs[first:first+count], one address, one size. */
typedef struct {
    int first, count;
    union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } control;
} group_t;

typedef struct {
    PyObject_HEAD
    int batch, busy; /* busy: a drain runs without the GIL; the tables must not change */
    Py_ssize_t buffer_size;
    uint8_t *buffers; /* batch * buffer_size */
    struct mmsghdr *rmsgs;
    struct iovec *riov;
    sockaddr_u *rnames;
    struct mmsghdr *smsgs; /* parallel to outs: sendmmsg wants the headers contiguous */
    out_t *outs;
    int n_out;
    int *keep; /* indexes of received datagrams left for Python */
    int n_keep;
    uint64_t counters[N_COUNTERS];
    unsigned long long wakeups; /* epoll_wait returns with events, in run_epoll */
    /* UDP GSO (fastpath_wire.c's send_run): the messages, their iovecs and groups */
    struct mmsghdr *gmsgs;
    struct iovec *giov; /* 3 per out: header, payload, padding */
    group_t *groups;
    int gso; /* 1 until the kernel says it cannot segment (EIO, EOPNOTSUPP...) */
    unsigned long long gso_messages; /* segmented messages sent (tests, docs/fastpath.md) */
    entry_t **by_fd;
    Py_ssize_t n_fd;
    entry_t **buckets;
    size_t n_buckets, n_entries; /* n_buckets: a power of two */
    uint64_t rng[4], hash_key;
} FastPath;

/* ---- small helpers --------------------------------------------------------------------- */

/* The splitmix64 finaliser: it seeds the PRNG (FP_new, fastpath_wire.c's xoshiro256**) and
 * mixes the hash keys (fastpath_tables.c). */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline int ip_eq(const ip_t *a, const ip_t *b) {
    return a->family == b->family && memcmp(a->addr, b->addr, 16) == 0;
}
static inline int ep_eq(const endpoint_t *a, const endpoint_t *b) {
    return a->port == b->port && ip_eq(&a->ip, &b->ip);
}

static inline entry_t *fd_entry(const FastPath *s, Py_ssize_t fd) {
    return fd >= 0 && fd < s->n_fd ? s->by_fd[fd] : NULL;
}

/* The fp_ functions are the extension's own: hidden, they stay out of the module's dynamic
 * symbols (PyInit__fastpath is its one export) and are called directly, not through the PLT. */
#pragma GCC visibility push(hidden)

/* ---- fastpath_tables.c: the (listener, client) hash table, permissions, channels --------- */

entry_t *fp_hash_find(const FastPath *s, int listener_fd, const endpoint_t *ep);
void fp_hash_link(FastPath *s, entry_t *e);
void fp_hash_unlink(FastPath *s, entry_t *e);
perm_t *fp_find_perm(const entry_t *e, const ip_t *ip);
int fp_unpermitted(const perm_t *perm, double now);
chan_t *fp_find_chan(const entry_t *e, unsigned number);
chan_t *fp_find_chan_by_peer(const entry_t *e, const endpoint_t *peer);
void fp_pop_by_peer(const entry_t *e, const endpoint_t *peer);

/* ---- fastpath_wire.c: the datagram path (runs without the GIL) --------------------------- */

void fp_crc_init(void);
void fp_ep_from_sa(endpoint_t *ep, const sockaddr_u *sa, socklen_t len);
int fp_take_budget(FastPath *s, entry_t *e, size_t size);
int fp_recv_batch(FastPath *s, int fd, int want, int *used, int *stop);
void fp_on_client_datagram(FastPath *s, int listener_fd, int i, double now);
void fp_on_peer_datagram(FastPath *s, entry_t *e, int i, double now);
void fp_flush(FastPath *s);

/* ---- fastpath_loop.c: the drains (the GIL released per batch), the epoll loop ------------ */

int fp_drain_listener(FastPath *s, int fd, double now, Py_ssize_t limit, PyObject **kept);
Py_ssize_t fp_drain_relay(FastPath *s, entry_t *e, int fd, double now, Py_ssize_t limit);
PyObject *fp_run_epoll(FastPath *s, PyObject *args, PyObject *kw);

#pragma GCC visibility pop

#endif /* SECURECONNECT_FASTPATH_H */
