/* secureconnect.turn._fastpath: the compiled UDP fast path of the TURN server (RFC 8656).
 *
 * The contract is docs/fastpath.md. The Python reference, followed check for check and in the
 * same order, is turn/relaypath.py (route_channel_data, wrap_peer_data, _data_indication,
 * split_send_indication_untrusted), turn/core.py (_relay_send), stun/attributes.py
 * (decode_xor_address_untrusted) and turn/udpplane.py (the drains: which errors are skipped,
 * what a failed send counts). Where Python keeps dicts (clients by address, permissions by IP,
 * channels by number and by peer), the tables keep their semantics, so that the differential
 * test (docs/fastpath.md) may drive both with any sequence; addresses compare in binary.
 *
 * Theory of operation: Python pushes every allocation's state into tables keyed by the relay
 * socket's descriptor (an array indexed by fd) and by (listening fd, client address) (a
 * chained hash table). A drain releases the GIL for a whole batch: recvmmsg into `batch`
 * buffers, classification and table lookups, header building, and sendmmsg grouped by
 * destination socket; payloads are sent straight out of the receive buffers (iovecs), so
 * nothing is copied and no Python object is made per relayed datagram. Only the datagrams left
 * for Python become objects, after the GIL is back. No memory is allocated without the GIL.
 *
 * Untrusted bytes: every read is bounded by the received length, checked before the read.
 * Descriptors belong to Python: nothing here ever closes one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: pyconfig.h defines _GNU_SOURCE (recvmmsg, sendmmsg) */
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
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

enum {
    TO_PEER_PACKETS, TO_PEER_BYTES, TO_CLIENT_PACKETS, TO_CLIENT_BYTES, DROP_NO_ALLOCATION,
    DROP_BAD_CHANNEL, DROP_NO_PERMISSION, DROP_BANDWIDTH, DROP_MALFORMED, DROP_OWN_PORT,
    SEND_ERRORS, N_COUNTERS
};
static const char *const counter_names[N_COUNTERS] = {
    "to_peer_packets", "to_peer_bytes", "to_client_packets", "to_client_bytes",
    "dropped_no_allocation", "dropped_bad_channel", "dropped_no_permission",
    "dropped_bandwidth", "dropped_malformed", "dropped_own_port", "send_errors",
};

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
    uint8_t header[HEADER_MAX];
    sockaddr_u dest;
    struct iovec iov[3];
} out_t;

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
    entry_t **by_fd;
    Py_ssize_t n_fd;
    entry_t **buckets;
    size_t n_buckets, n_entries; /* n_buckets: a power of two */
    uint64_t rng[4], hash_key;
} FastPath;

static uint32_t crc_table[256];

/* ---- small helpers --------------------------------------------------------------------- */

static inline unsigned get16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xFFFF); }

/* CRC-32 (IEEE 802.3, what zlib.crc32 computes), for FINGERPRINT (RFC 8489 §14.7). */
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* splitmix64 seeds xoshiro256**, which makes the transaction ids of Data indications (RFC 8489
 * §6: random; an indication needs no secrecy). The finaliser also mixes the hash keys. */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t rng_next(uint64_t *s) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
    return result;
}

static inline int v4_mapped(const uint8_t *addr) { /* ::ffff:a.b.c.d (RFC 4291 §2.5.5.2) */
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    return memcmp(addr, prefix, 12) == 0;
}
static inline int ip_eq(const ip_t *a, const ip_t *b) {
    return a->family == b->family && memcmp(a->addr, b->addr, 16) == 0;
}
static inline int ep_eq(const endpoint_t *a, const endpoint_t *b) {
    return a->port == b->port && ip_eq(&a->ip, &b->ip);
}

/* A received source address; IPv6 flow info and scope id are dropped, as udpplane does. */
static void ep_from_sa(endpoint_t *ep, const sockaddr_u *sa, socklen_t len) {
    memset(ep, 0, sizeof *ep);
    if (sa->sa.sa_family == AF_INET && len >= sizeof sa->v4) {
        ep->ip.family = AF_INET;
        memcpy(ep->ip.addr, &sa->v4.sin_addr, 4);
        ep->port = ntohs(sa->v4.sin_port);
    } else if (sa->sa.sa_family == AF_INET6 && len >= sizeof sa->v6) {
        ep->ip.family = AF_INET6;
        memcpy(ep->ip.addr, &sa->v6.sin6_addr, 16);
        ep->port = ntohs(sa->v6.sin6_port);
    }
}

static socklen_t sa_from_ep(sockaddr_u *sa, const endpoint_t *ep) {
    memset(sa, 0, sizeof *sa);
    if (ep->ip.family == AF_INET) {
        sa->v4.sin_family = AF_INET;
        sa->v4.sin_port = htons(ep->port);
        memcpy(&sa->v4.sin_addr, ep->ip.addr, 4);
        return sizeof sa->v4;
    }
    sa->v6.sin6_family = AF_INET6;
    sa->v6.sin6_port = htons(ep->port);
    memcpy(&sa->v6.sin6_addr, ep->ip.addr, 16);
    return sizeof sa->v6;
}

static size_t hash_of(const FastPath *s, int listener_fd, const endpoint_t *ep) {
    uint64_t a, b;
    memcpy(&a, ep->ip.addr, 8);
    memcpy(&b, ep->ip.addr + 8, 8);
    uint64_t h = mix64(s->hash_key ^ (uint32_t)listener_fd ^ ((uint64_t)ep->port << 32) ^
                       ((uint64_t)ep->ip.family << 48));
    return (size_t)mix64(mix64(h ^ a) ^ b);
}

static entry_t *hash_find(const FastPath *s, int listener_fd, const endpoint_t *ep) {
    entry_t *e = s->buckets[hash_of(s, listener_fd, ep) & (s->n_buckets - 1)];
    while (e != NULL && !(e->listener_fd == listener_fd && ep_eq(&e->client, ep))) e = e->next;
    return e;
}

static void hash_link(FastPath *s, entry_t *e) {
    entry_t **head = &s->buckets[hash_of(s, e->listener_fd, &e->client) & (s->n_buckets - 1)];
    e->next = *head, *head = e, s->n_entries++;
}
static void hash_unlink(FastPath *s, entry_t *e) {
    entry_t **link = &s->buckets[hash_of(s, e->listener_fd, &e->client) & (s->n_buckets - 1)];
    while (*link != e) link = &(*link)->next;
    *link = e->next, s->n_entries--;
}

static inline entry_t *fd_entry(const FastPath *s, Py_ssize_t fd) {
    return fd >= 0 && fd < s->n_fd ? s->by_fd[fd] : NULL;
}

static perm_t *find_perm(const entry_t *e, const ip_t *ip) {
    for (Py_ssize_t i = 0; i < e->n_perms; i++)
        if (ip_eq(&e->perms[i].ip, ip)) return &e->perms[i];
    return NULL;
}
/* relaypath's permissions.get(ip, 0.0) <= now (RFC 8656 §9): not permitted. */
static int unpermitted(const perm_t *perm, double now) {
    return (perm != NULL ? perm->expires : 0.0) <= now;
}
static chan_t *find_chan(const entry_t *e, unsigned number) {
    for (Py_ssize_t i = 0; i < e->n_chans; i++)
        if (e->chans[i].number == number) return &e->chans[i];
    return NULL;
}
static chan_t *find_chan_by_peer(const entry_t *e, const endpoint_t *peer) {
    for (Py_ssize_t i = 0; i < e->n_chans; i++)
        if (e->chans[i].by_peer && ep_eq(&e->chans[i].peer, peer)) return &e->chans[i];
    return NULL;
}
static void pop_by_peer(const entry_t *e, const endpoint_t *peer) { /* channel_by_peer.pop */
    chan_t *ch = find_chan_by_peer(e, peer);
    if (ch != NULL) ch->by_peer = 0;
}

/* ---- the datagram path (runs without the GIL) ------------------------------------------ */

/* The per-allocation bandwidth cap, with relaypath's float arithmetic exactly (spend_to_peer,
 * wrap_peer_data): subtract, and add back when that went below 0. */
static int take_budget(FastPath *s, entry_t *e, size_t size) {
    e->budget -= (double)size;
    if (e->budget < 0) {
        e->budget += (double)size;
        s->counters[DROP_BANDWIDTH]++;
        return 0;
    }
    return 1;
}

/* A failed send: counted; what went to a client is taken back (udpplane.relay_drain), what
 * went to a peer stays counted (udpplane.forward_channel_data, send_to_peer). */
static void send_failed(FastPath *s, const out_t *o) {
    s->counters[SEND_ERRORS]++;
    if (o->to_client) {
        s->counters[TO_CLIENT_PACKETS]--;
        s->counters[TO_CLIENT_BYTES] -= o->size;
    }
}

/* Queue a datagram of header_len bytes (written by the caller into the result's header), the
 * payload, and pad zero bytes. The destination is resolved for the socket's family as Python's
 * sendto does (getaddrinfo): an IPv4-mapped address becomes IPv4 for an IPv4 socket, and any
 * other address of the other family fails, counted like a failed send. */
static out_t *queue_out(FastPath *s, int fd, int family, const endpoint_t *dest, int to_client,
                        const uint8_t *payload, size_t size, size_t header_len, size_t pad) {
    static const uint8_t zeros[4] = {0, 0, 0, 0};
    out_t *o = &s->outs[s->n_out];
    endpoint_t to = *dest;
    o->fd = fd, o->to_client = to_client, o->size = (uint32_t)size;
    if (family == AF_INET && to.ip.family == AF_INET6 && v4_mapped(to.ip.addr)) {
        memmove(to.ip.addr, to.ip.addr + 12, 4);
        memset(to.ip.addr + 4, 0, 12);
        to.ip.family = AF_INET;
    }
    if (family != 0 && family != to.ip.family) {
        send_failed(s, o);
        return NULL;
    }
    struct mmsghdr *m = &s->smsgs[s->n_out++];
    memset(m, 0, sizeof *m);
    m->msg_hdr.msg_name = &o->dest;
    m->msg_hdr.msg_namelen = sa_from_ep(&o->dest, &to);
    m->msg_hdr.msg_iov = o->iov;
    size_t n = 0;
    if (header_len) o->iov[n].iov_base = o->header, o->iov[n++].iov_len = header_len;
    o->iov[n].iov_base = (void *)payload, o->iov[n++].iov_len = size;
    if (pad) o->iov[n].iov_base = (void *)zeros, o->iov[n++].iov_len = pad;
    m->msg_hdr.msg_iovlen = n;
    return o;
}

/* Send outs[pos:end], all to one socket. Python sends datagram by datagram and counts each
 * failure: a datagram the kernel refuses fails alone and the rest go on; EAGAIN (a full send
 * buffer) is retried once, then the rest fail; a descriptor that is gone fails them all. Flags
 * 0: the socket's own blocking mode decides, as for Python's sendto. */
static void send_run(FastPath *s, int pos, int end) {
    int fd = s->outs[pos].fd, retried = 0;
    while (pos < end) {
        int n = sendmmsg(fd, &s->smsgs[pos], (unsigned)(end - pos), 0);
        if (n > 0) {
            pos += n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!retried) {
                retried = 1;
                continue;
            }
        } else if (errno != EBADF && errno != ENOTSOCK) {
            send_failed(s, &s->outs[pos++]); /* this datagram only */
            continue;
        }
        while (pos < end) send_failed(s, &s->outs[pos++]);
    }
}

/* Send everything queued, one sendmmsg run per consecutive destination socket. */
static void flush(FastPath *s) {
    for (int start = 0, end; start < s->n_out; start = end) {
        for (end = start + 1; end < s->n_out && s->outs[end].fd == s->outs[start].fd; end++) {}
        send_run(s, start, end);
    }
    s->n_out = 0;
}

/* Receive up to `want` datagrams into the buffers; returns how many. *used counts the
 * iterations spent, skipped errors included (udpplane's drains spend one of BATCH on each);
 * *stop is set at EAGAIN (nothing more to read) and when the descriptor is gone. */
static int recv_batch(FastPath *s, int fd, int want, int *used, int *stop) {
    *used = 0;
    for (int i = 0; i < want; i++) {
        s->rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_u);
        s->rmsgs[i].msg_hdr.msg_flags = 0;
        s->rmsgs[i].msg_len = 0;
    }
    while (*used < want) {
        int n = recvmmsg(fd, s->rmsgs, (unsigned)(want - *used), MSG_DONTWAIT, NULL);
        if (n > 0) {
            *used += n;
            return n;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == EBADF ||
            errno == ENOTSOCK) {
            *stop = 1;
            return 0;
        }
        (*used)++; /* ECONNREFUSED and other queued ICMP errors: skipped, as Python does */
    }
    return 0;
}

/* RFC 8489 §14.2 (XOR-MAPPED-ADDRESS layout, used by XOR-PEER-ADDRESS, RFC 8656 §18.3), as
 * stun.attributes.decode_xor_address_untrusted: length 8 with family 0x01, or length 20 with
 * family 0x02; the first (reserved) byte is ignored; the port is XORed with the cookie's top 16
 * bits, an IPv4 address with the cookie, an IPv6 address with cookie || transaction id. */
static int decode_xor_peer(const uint8_t *v, size_t len, const uint8_t *txid, endpoint_t *ep) {
    uint8_t mask[16];
    put32(mask, MAGIC_COOKIE);
    memcpy(mask + 4, txid, 12);
    memset(ep, 0, sizeof *ep);
    if (len == 8 && v[1] == 0x01) ep->ip.family = AF_INET;
    else if (len == 20 && v[1] == 0x02) ep->ip.family = AF_INET6;
    else return 0;
    ep->port = (uint16_t)(get16(v + 2) ^ (MAGIC_COOKIE >> 16));
    for (size_t i = 0; i < len - 4; i++) ep->ip.addr[i] = v[4 + i] ^ mask[i];
    return 1;
}

/* relaypath.split_send_indication_untrusted: the plain shape of a Send indication (RFC 8656
 * §11.2) - cookie, a consistent length, only XOR-PEER-ADDRESS, DATA and DONT-FRAGMENT, and
 * optionally a valid FINGERPRINT last - or 0, which leaves the message to the general codec. */
static int split_send(const uint8_t *p, size_t end, const uint8_t **peer, size_t *peer_len,
                      const uint8_t **data, size_t *data_len) {
    /* RFC 8489 §5: the magic cookie, and a length that counts the attributes exactly */
    if (end < 20 || get32(p + 4) != MAGIC_COOKIE || get16(p + 2) != end - 20) return 0;
    int have_peer = 0, have_data = 0;
    size_t offset = 20;
    while (offset + 4 <= end) {
        unsigned type = get16(p + offset);
        size_t size = get16(p + offset + 2), start = offset + 4, stop = start + size;
        if (stop > end) return 0;
        if (type == ATTR_XOR_PEER) {
            if (!have_peer) have_peer = 1, *peer = p + start, *peer_len = size; /* §14: first */
        } else if (type == ATTR_DATA) {
            if (!have_data) have_data = 1, *data = p + start, *data_len = size;
        } else if (type == ATTR_FINGERPRINT) {
            /* RFC 8489 §14.7: the last attribute; CRC-32 of the message up to it, XOR
             * 0x5354554E (the header's length already counts the FINGERPRINT). */
            if (size != 4 || stop != end ||
                get32(p + start) != (crc32_of(p, offset) ^ FINGERPRINT_XOR))
                return 0;
        } else if (type != ATTR_DONT_FRAGMENT) {
            return 0;
        }
        offset = start + ((size + 3) & ~(size_t)3); /* RFC 8489 §14: padded to 4 */
    }
    return offset == end && have_peer && have_data;
}

/* A ChannelData message from a client (RFC 8656 §12.4-12.5): relaypath.route_channel_data's
 * checks in its order, then udpplane.forward_channel_data's send from the relay socket. */
static void client_channel_data(FastPath *s, entry_t *e, const uint8_t *p, size_t n, double now) {
    if (e == NULL) {
        s->counters[DROP_NO_ALLOCATION]++;
        return;
    }
    /* RFC 8656 §12.4: the length counts the application data only; over UDP the datagram may
     * be longer (padding), never shorter. */
    if (n < 4 || get16(p + 2) > n - 4) {
        s->counters[DROP_MALFORMED]++;
        return;
    }
    size_t length = get16(p + 2);
    /* RFC 8656 §12.5: data on a channel that is not bound is discarded. */
    const chan_t *ch = find_chan(e, get16(p));
    if (ch == NULL || ch->expires <= now) {
        s->counters[DROP_BAD_CHANNEL]++;
        return;
    }
    /* RFC 8656 §9: relaying needs a permission for the peer's IP address. */
    if (unpermitted(find_perm(e, &ch->peer.ip), now)) {
        s->counters[DROP_NO_PERMISSION]++;
        return;
    }
    if (!take_budget(s, e, length)) return;
    s->counters[TO_PEER_PACKETS]++;
    s->counters[TO_PEER_BYTES] += length;
    queue_out(s, e->relay_fd, e->relay_family, &ch->peer, 0, p + 4, length, 0, 0);
}

/* A Send indication (RFC 8656 §11.2): 0 leaves it to Python (not the plain shape, or no
 * allocation: the core counts it); otherwise core._relay_send's checks in its order. */
static int client_send(FastPath *s, entry_t *e, const uint8_t *p, size_t n, double now) {
    const uint8_t *value = NULL, *data = NULL;
    size_t value_len = 0, data_len = 0;
    if (!split_send(p, n, &value, &value_len, &data, &data_len) || e == NULL) return 0;
    endpoint_t peer;
    if (!decode_xor_peer(value, value_len, p + 8, &peer)) {
        s->counters[DROP_MALFORMED]++;
        return 1;
    }
    /* RFC 8656 §9, then the server's own service ports, never a peer (RFC 8656 §21.1.2,
     * peerpolicy.OwnEndpoints) */
    const perm_t *perm = find_perm(e, &peer.ip);
    if (unpermitted(perm, now)) {
        s->counters[DROP_NO_PERMISSION]++;
        return 1;
    }
    for (Py_ssize_t i = 0; perm != NULL && i < perm->n_own; i++) {
        if (perm->own_ports[i] == peer.port) {
            s->counters[DROP_OWN_PORT]++;
            return 1;
        }
    }
    if (!take_budget(s, e, data_len)) return 1;
    s->counters[TO_PEER_PACKETS]++;
    s->counters[TO_PEER_BYTES] += data_len;
    queue_out(s, e->relay_fd, e->relay_family, &peer, 0, data, data_len, 0, 0);
    return 1;
}

/* One datagram on a listening socket (udpplane._listener_drain): ChannelData (first two bits
 * 01, RFC 8656 §12) and plain Send indications are handled; the rest is kept for Python. */
static void on_client_datagram(FastPath *s, int listener_fd, int i, double now) {
    const struct mmsghdr *m = &s->rmsgs[i];
    const uint8_t *p = s->buffers + (size_t)i * (size_t)s->buffer_size;
    size_t n = m->msg_len;
    if (m->msg_hdr.msg_flags & MSG_TRUNC) { /* larger than a buffer: no valid message is */
        s->counters[DROP_MALFORMED]++;
        return;
    }
    endpoint_t source;
    ep_from_sa(&source, &s->rnames[i], m->msg_hdr.msg_namelen);
    if (n >= 1 && p[0] >> 6 == 1) {
        client_channel_data(s, hash_find(s, listener_fd, &source), p, n, now);
        return;
    }
    if (n >= 2 && get16(p) == SEND_INDICATION &&
        client_send(s, hash_find(s, listener_fd, &source), p, n, now))
        return;
    s->keep[s->n_keep++] = i;
}

/* relaypath._data_indication (RFC 8656 §11.3): the header of a Data indication, its
 * XOR-PEER-ADDRESS and DATA's attribute header, no FINGERPRINT. An IPv4-mapped peer is
 * encoded as the IPv4 address it is (stun.attributes). Returns the header's length. */
static size_t data_indication(FastPath *s, uint8_t *h, const endpoint_t *peer, size_t size) {
    const uint8_t *addr = peer->ip.addr;
    size_t addr_len = 16;
    if (peer->ip.family == AF_INET) addr_len = 4;
    else if (v4_mapped(addr)) addr += 12, addr_len = 4;
    size_t xor_len = 4 + addr_len; /* RFC 8489 §14.2: reserved, family, port, address */
    uint64_t r0 = rng_next(s->rng), r1 = rng_next(s->rng);
    put16(h, DATA_INDICATION);
    put16(h + 2, (unsigned)(4 + xor_len + 4 + size + (-size & 3)));
    put32(h + 4, MAGIC_COOKIE);
    memcpy(h + 8, &r0, 8); /* the transaction id (RFC 8489 §6: random) */
    memcpy(h + 16, &r1, 4);
    put16(h + 20, ATTR_XOR_PEER);
    put16(h + 22, (unsigned)xor_len);
    h[24] = 0;
    h[25] = addr_len == 4 ? 0x01 : 0x02;
    put16(h + 26, peer->port ^ (MAGIC_COOKIE >> 16));
    for (size_t k = 0; k < addr_len; k++) h[28 + k] = addr[k] ^ h[4 + k]; /* cookie || txid */
    put16(h + 24 + xor_len, ATTR_DATA);
    put16(h + 26 + xor_len, (unsigned)size);
    return 28 + xor_len;
}

/* One datagram from a peer on a relay socket: relaypath.wrap_peer_data's checks in its order
 * (RFC 8656 §11.3, §12.6), then udpplane.to_udp's send from the listening socket. */
static void on_peer_datagram(FastPath *s, entry_t *e, int i, double now) {
    const struct mmsghdr *m = &s->rmsgs[i];
    const uint8_t *p = s->buffers + (size_t)i * (size_t)s->buffer_size;
    size_t n = m->msg_len;
    if (m->msg_hdr.msg_flags & MSG_TRUNC) {
        s->counters[DROP_MALFORMED]++;
        return;
    }
    endpoint_t peer;
    ep_from_sa(&peer, &s->rnames[i], m->msg_hdr.msg_namelen);
    /* RFC 8656 §11.3: without a permission for the peer's IP the datagram is discarded. */
    if (unpermitted(find_perm(e, &peer.ip), now)) {
        s->counters[DROP_NO_PERMISSION]++;
        return;
    }
    if (n > MAX_INDICATION_PAYLOAD) { /* fits no Data indication's 16-bit length */
        s->counters[DROP_MALFORMED]++;
        return;
    }
    if (!take_budget(s, e, n)) return;
    s->counters[TO_CLIENT_PACKETS]++;
    s->counters[TO_CLIENT_BYTES] += n;
    const chan_t *ch = find_chan_by_peer(e, &peer);
    if (ch != NULL && ch->expires > now) {
        /* RFC 8656 §12.6 ChannelData; over UDP not padded (§12.5) */
        out_t *o = queue_out(s, e->listener_fd, e->listener_family, &e->client, 1, p, n, 4, 0);
        if (o != NULL) put16(o->header, ch->number), put16(o->header + 2, (unsigned)n);
        return;
    }
    /* a Data indication (RFC 8656 §11.3), its header's length known once it is written */
    out_t *o = queue_out(s, e->listener_fd, e->listener_family, &e->client, 1, p, n, HEADER_MAX,
                         -n & 3);
    if (o != NULL) o->iov[0].iov_len = data_indication(s, o->header, &peer, n);
}

/* ---- Python side: argument parsing ------------------------------------------------------ */

static int parse_ip(PyObject *text, ip_t *ip) {
    Py_ssize_t len;
    const char *s = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &len) : NULL;
    if (s == NULL) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "an IP address must be a str");
        return -1;
    }
    memset(ip, 0, sizeof *ip);
    if ((size_t)len == strlen(s)) {
        if (inet_pton(AF_INET, s, ip->addr) == 1) return ip->family = AF_INET, 0;
        if (inet_pton(AF_INET6, s, ip->addr) == 1) return ip->family = AF_INET6, 0;
    }
    PyErr_Format(PyExc_ValueError, "%R is not an IPv4 or IPv6 address", text);
    return -1;
}

static int parse_port(PyObject *value, uint16_t *port) {
    long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > 0xFFFF) {
        PyErr_Format(PyExc_ValueError, "port %ld is out of range", v);
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

static int parse_endpoint(PyObject *address, endpoint_t *ep) {
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) != 2) {
        PyErr_Format(PyExc_ValueError, "an address is an (ip, port) tuple, not %R", address);
        return -1;
    }
    if (parse_ip(PyTuple_GET_ITEM(address, 0), &ep->ip) < 0) return -1;
    return parse_port(PyTuple_GET_ITEM(address, 1), &ep->port);
}

/* Grow *array (of *cap items of `size` bytes) to hold one more than `used`. */
static int reserve(void **array, Py_ssize_t *cap, Py_ssize_t used, size_t size) {
    if (used < *cap) return 0;
    Py_ssize_t want = *cap ? *cap * 2 : 4;
    void *grown = PyMem_Realloc(*array, (size_t)want * size);
    if (grown == NULL) return PyErr_NoMemory(), -1;
    *array = grown, *cap = want;
    return 0;
}

static int idle(FastPath *s) {
    if (!s->busy) return 1;
    PyErr_SetString(PyExc_RuntimeError, "FastPath is draining in another thread");
    return 0;
}

static entry_t *known(FastPath *s, int relay_fd) {
    entry_t *e = fd_entry(s, relay_fd);
    if (e == NULL) PyErr_Format(PyExc_KeyError, "relay_fd %d", relay_fd);
    return e;
}

static int sock_family(int fd) {
    sockaddr_u sa;
    socklen_t len = sizeof sa;
    return getsockname(fd, &sa.sa, &len) == 0 ? sa.sa.sa_family : 0;
}

/* ---- Python side: the tables ------------------------------------------------------------ */

static PyObject *FP_add(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "listener_fd", "client", "budget", NULL};
    int relay_fd, listener_fd;
    PyObject *client;
    double budget;
    endpoint_t ep;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiOd:add", kwlist, &relay_fd, &listener_fd,
                                     &client, &budget) ||
        !idle(s) || parse_endpoint(client, &ep) < 0)
        return NULL;
    if (relay_fd < 0 || listener_fd < 0)
        return PyErr_SetString(PyExc_ValueError, "descriptors are >= 0"), NULL;
    if (fd_entry(s, relay_fd) != NULL)
        return PyErr_Format(PyExc_ValueError, "relay_fd %d is already there", relay_fd);
    if (relay_fd >= s->n_fd) {
        Py_ssize_t n = s->n_fd ? s->n_fd : 64;
        while (n <= relay_fd) n *= 2;
        entry_t **grown = PyMem_Realloc(s->by_fd, (size_t)n * sizeof *grown);
        if (grown == NULL) return PyErr_NoMemory();
        memset(grown + s->n_fd, 0, (size_t)(n - s->n_fd) * sizeof *grown);
        s->by_fd = grown, s->n_fd = n;
    }
    if (s->n_entries >= s->n_buckets) { /* load factor 1: rehash into twice the buckets */
        size_t n = s->n_buckets * 2;
        entry_t **buckets = PyMem_Calloc(n, sizeof *buckets);
        if (buckets == NULL) return PyErr_NoMemory();
        entry_t **old = s->buckets;
        size_t n_old = s->n_buckets;
        s->buckets = buckets, s->n_buckets = n, s->n_entries = 0;
        for (size_t b = 0; b < n_old; b++) {
            for (entry_t *e = old[b], *next; e != NULL; e = next) next = e->next, hash_link(s, e);
        }
        PyMem_Free(old);
    }
    entry_t *e = PyMem_Calloc(1, sizeof *e);
    if (e == NULL) return PyErr_NoMemory();
    e->relay_fd = relay_fd, e->listener_fd = listener_fd, e->client = ep, e->budget = budget;
    e->relay_family = sock_family(relay_fd), e->listener_family = sock_family(listener_fd);
    /* Python's dict of clients: the key now names this allocation (the core never has two) */
    entry_t *other = hash_find(s, listener_fd, &ep);
    if (other != NULL) hash_unlink(s, other);
    hash_link(s, e);
    s->by_fd[relay_fd] = e;
    Py_RETURN_NONE;
}

static void free_entry(entry_t *e) {
    for (Py_ssize_t i = 0; i < e->n_perms; i++) PyMem_Free(e->perms[i].own_ports);
    PyMem_Free(e->perms);
    PyMem_Free(e->chans);
    PyMem_Free(e);
}

static PyObject *FP_remove(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", NULL};
    int relay_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i:remove", kwlist, &relay_fd) || !idle(s))
        return NULL;
    entry_t *e = fd_entry(s, relay_fd);
    if (e == NULL) Py_RETURN_NONE;
    entry_t *keyed = hash_find(s, e->listener_fd, &e->client); /* by_client.pop(key) */
    if (keyed != NULL) hash_unlink(s, keyed);
    s->by_fd[relay_fd] = NULL;
    free_entry(e);
    Py_RETURN_NONE;
}

static PyObject *FP_permit(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "ip", "expires", "own_ports", NULL};
    int relay_fd;
    PyObject *text, *ports;
    double expires;
    ip_t ip;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOdO:permit", kwlist, &relay_fd, &text, &expires,
                                     &ports) ||
        !idle(s) || (e = known(s, relay_fd)) == NULL || parse_ip(text, &ip) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(ports, "own_ports must be a sequence of ports");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint16_t *own = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *own);
    if (own == NULL) return Py_DECREF(seq), PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_port(PySequence_Fast_GET_ITEM(seq, i), &own[i]) < 0)
            return Py_DECREF(seq), PyMem_Free(own), NULL;
    }
    Py_DECREF(seq);
    perm_t *perm = find_perm(e, &ip);
    if (perm == NULL) {
        if (reserve((void **)&e->perms, &e->cap_perms, e->n_perms, sizeof *perm) < 0)
            return PyMem_Free(own), NULL;
        perm = &e->perms[e->n_perms++];
        perm->ip = ip, perm->own_ports = NULL;
    }
    PyMem_Free(perm->own_ports);
    perm->expires = expires, perm->own_ports = own, perm->n_own = n;
    Py_RETURN_NONE;
}

static PyObject *FP_forget_permission(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "ip", NULL};
    int relay_fd;
    PyObject *text;
    ip_t ip;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO:forget_permission", kwlist, &relay_fd,
                                     &text) ||
        !idle(s) || parse_ip(text, &ip) < 0)
        return NULL;
    entry_t *e = fd_entry(s, relay_fd);
    perm_t *perm = e != NULL ? find_perm(e, &ip) : NULL;
    if (perm != NULL) {
        PyMem_Free(perm->own_ports);
        *perm = e->perms[--e->n_perms];
    }
    Py_RETURN_NONE;
}

static PyObject *FP_bind_channel(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "number", "peer", "expires", NULL};
    int relay_fd, number;
    PyObject *peer;
    double expires;
    endpoint_t ep;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiOd:bind_channel", kwlist, &relay_fd, &number,
                                     &peer, &expires) ||
        !idle(s) || (e = known(s, relay_fd)) == NULL || parse_endpoint(peer, &ep) < 0)
        return NULL;
    if (number < 0 || number > 0xFFFF)
        return PyErr_Format(PyExc_ValueError, "channel number %d is not 16 bits", number);
    chan_t *ch = find_chan(e, (unsigned)number);
    if (ch == NULL || !ep_eq(&ch->peer, &ep)) { /* a new binding, as relaypath's dicts do it */
        if (ch != NULL) {
            pop_by_peer(e, &ch->peer);
        } else {
            if (reserve((void **)&e->chans, &e->cap_chans, e->n_chans, sizeof *ch) < 0)
                return NULL;
            ch = &e->chans[e->n_chans++];
            ch->number = (uint16_t)number;
        }
        pop_by_peer(e, &ep); /* channel_by_peer[peer] = this channel */
        ch->peer = ep, ch->by_peer = 1;
    }
    ch->expires = expires;
    Py_RETURN_NONE;
}

static PyObject *FP_forget_channel(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "number", NULL};
    int relay_fd, number;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii:forget_channel", kwlist, &relay_fd, &number) ||
        !idle(s))
        return NULL;
    entry_t *e = fd_entry(s, relay_fd);
    chan_t *ch = e != NULL && number >= 0 && number <= 0xFFFF ? find_chan(e, (unsigned)number)
                                                              : NULL;
    if (ch != NULL) {
        pop_by_peer(e, &ch->peer);
        *ch = e->chans[--e->n_chans];
    }
    Py_RETURN_NONE;
}

static PyObject *FP_budget(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", NULL};
    int relay_fd;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i:budget", kwlist, &relay_fd) || !idle(s) ||
        (e = known(s, relay_fd)) == NULL)
        return NULL;
    return PyFloat_FromDouble(e->budget);
}

static PyObject *FP_set_budget(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "value", NULL};
    int relay_fd;
    double value;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "id:set_budget", kwlist, &relay_fd, &value) ||
        !idle(s) || (e = known(s, relay_fd)) == NULL)
        return NULL;
    e->budget = value;
    Py_RETURN_NONE;
}

/* For the core's own Send path (relaypath.spend_to_peer): the budget lives here, and so does
 * the count of refusals; the caller counts what it relays. */
static PyObject *FP_spend(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "size", NULL};
    int relay_fd;
    Py_ssize_t size;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "in:spend", kwlist, &relay_fd, &size) ||
        !idle(s) || (e = known(s, relay_fd)) == NULL)
        return NULL;
    if (size < 0) return PyErr_SetString(PyExc_ValueError, "size must be >= 0"), NULL;
    return PyBool_FromLong(take_budget(s, e, (size_t)size));
}

static PyObject *FP_counters(FastPath *s, PyObject *Py_UNUSED(ignored)) {
    PyObject *d = idle(s) ? PyDict_New() : NULL;
    for (int i = 0; d != NULL && i < N_COUNTERS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->counters[i]);
        if (v == NULL || PyDict_SetItemString(d, counter_names[i], v) < 0) Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* ---- Python side: the drains ----------------------------------------------------------- */

/* (ip, port) as the socket module prints it: inet_ntop, IPv6 trimmed to two items. */
static PyObject *address_of(const sockaddr_u *sa, socklen_t len) {
    char text[INET6_ADDRSTRLEN] = "";
    endpoint_t ep;
    ep_from_sa(&ep, sa, len);
    if (ep.ip.family != 0 && inet_ntop(ep.ip.family, ep.ip.addr, text, sizeof text) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(si)", text, (int)ep.port);
}

static int append_kept(FastPath *s, PyObject *list) {
    for (int k = 0; k < s->n_keep; k++) {
        int i = s->keep[k];
        const struct mmsghdr *m = &s->rmsgs[i];
        PyObject *address = address_of(&s->rnames[i], m->msg_hdr.msg_namelen);
        PyObject *item = address == NULL ? NULL
            : Py_BuildValue("(y#N)", s->buffers + (size_t)i * (size_t)s->buffer_size,
                            (Py_ssize_t)m->msg_len, address);
        if (item == NULL || PyList_Append(list, item) < 0) return Py_XDECREF(item), -1;
        Py_DECREF(item);
    }
    return 0;
}

static PyObject *FP_drain_listener(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"listener_fd", "now", "limit", NULL};
    int fd, stop = 0;
    double now;
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "idn:drain_listener", kwlist, &fd, &now, &limit) ||
        !idle(s))
        return NULL;
    PyObject *result = PyList_New(0);
    while (result != NULL && limit > 0 && !stop) {
        int want = limit < s->batch ? (int)limit : s->batch, used;
        s->busy = 1, s->n_keep = 0;
        Py_BEGIN_ALLOW_THREADS
        int got = recv_batch(s, fd, want, &used, &stop);
        for (int i = 0; i < got; i++) on_client_datagram(s, fd, i, now);
        flush(s);
        Py_END_ALLOW_THREADS
        s->busy = 0, limit -= used;
        if (append_kept(s, result) < 0) Py_CLEAR(result);
    }
    return result;
}

static PyObject *FP_drain_relay(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "now", "limit", NULL};
    int fd, stop = 0;
    double now;
    Py_ssize_t limit, total = 0;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "idn:drain_relay", kwlist, &fd, &now, &limit) ||
        !idle(s))
        return NULL;
    if ((e = fd_entry(s, fd)) == NULL) return PyLong_FromLong(0); /* not ours: nothing read */
    while (limit > 0 && !stop) {
        int want = limit < s->batch ? (int)limit : s->batch, used;
        s->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        int got = recv_batch(s, fd, want, &used, &stop);
        for (int i = 0; i < got; i++) on_peer_datagram(s, e, i, now);
        flush(s);
        total += got;
        Py_END_ALLOW_THREADS
        s->busy = 0, limit -= used;
    }
    return PyLong_FromSsize_t(total);
}

/* ---- the type -------------------------------------------------------------------------- */

static void FP_dealloc(FastPath *s) {
    for (Py_ssize_t fd = 0; fd < s->n_fd; fd++)
        if (s->by_fd[fd] != NULL) free_entry(s->by_fd[fd]);
    PyMem_Free(s->by_fd);
    PyMem_Free(s->buckets);
    PyMem_Free(s->buffers);
    PyMem_Free(s->rmsgs);
    PyMem_Free(s->riov);
    PyMem_Free(s->rnames);
    PyMem_Free(s->smsgs);
    PyMem_Free(s->outs);
    PyMem_Free(s->keep);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *FP_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"batch", "seed", "buffer_size", NULL};
    int batch = 64;
    PyObject *seed = Py_None;
    Py_ssize_t buffer_size = MAX_BUFFER;
    uint64_t state[5];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i$On:FastPath", kwlist, &batch, &seed,
                                     &buffer_size))
        return NULL;
    if (batch < 1 || batch > MAX_BATCH)
        return PyErr_Format(PyExc_ValueError, "batch must be 1 to %d", MAX_BATCH);
    if (buffer_size < 64 || buffer_size > MAX_BUFFER)
        return PyErr_Format(PyExc_ValueError, "buffer_size must be 64 to %d", MAX_BUFFER);
    if (seed == Py_None) {
        size_t got = 0;
        while (got < sizeof state) {
            ssize_t n = getrandom((uint8_t *)state + got, sizeof state - got, 0);
            if (n < 0 && errno != EINTR) return PyErr_SetFromErrno(PyExc_OSError);
            got += n > 0 ? (size_t)n : 0;
        }
    } else {
        uint64_t x = PyLong_AsUnsignedLongLongMask(seed);
        if (x == (uint64_t)-1 && PyErr_Occurred()) return NULL;
        for (int i = 0; i < 5; i++) state[i] = mix64(x += 0x9E3779B97F4A7C15ull); /* splitmix64 */
    }
    FastPath *s = (FastPath *)type->tp_alloc(type, 0);
    if (s == NULL) return NULL;
    memcpy(s->rng, state, sizeof s->rng);
    s->rng[0] |= 1; /* xoshiro's state must not be all zeros */
    s->hash_key = state[4];
    s->batch = batch, s->buffer_size = buffer_size, s->n_buckets = 64;
    size_t n = (size_t)batch;
    s->buffers = PyMem_Malloc(n * (size_t)buffer_size);
    s->rmsgs = PyMem_Calloc(n, sizeof *s->rmsgs);
    s->riov = PyMem_Calloc(n, sizeof *s->riov);
    s->rnames = PyMem_Calloc(n, sizeof *s->rnames);
    s->smsgs = PyMem_Calloc(n, sizeof *s->smsgs);
    s->outs = PyMem_Calloc(n, sizeof *s->outs);
    s->keep = PyMem_Calloc(n, sizeof *s->keep);
    s->buckets = PyMem_Calloc(s->n_buckets, sizeof *s->buckets);
    if (!s->buffers || !s->rmsgs || !s->riov || !s->rnames || !s->smsgs || !s->outs ||
        !s->keep || !s->buckets)
        return Py_DECREF(s), PyErr_NoMemory();
    for (size_t i = 0; i < n; i++) {
        s->riov[i].iov_base = s->buffers + i * (size_t)buffer_size;
        s->riov[i].iov_len = (size_t)buffer_size;
        s->rmsgs[i].msg_hdr.msg_iov = &s->riov[i];
        s->rmsgs[i].msg_hdr.msg_iovlen = 1;
        s->rmsgs[i].msg_hdr.msg_name = &s->rnames[i];
    }
    return (PyObject *)s;
}

#define METHOD(name, doc) \
    {#name, (PyCFunction)(void (*)(void))FP_##name, METH_VARARGS | METH_KEYWORDS, doc}
static PyMethodDef FP_methods[] = {
    METHOD(add, "add(relay_fd, listener_fd, client, budget): a UDP client's allocation"),
    METHOD(remove, "remove(relay_fd): forget an allocation; no error if absent"),
    METHOD(permit, "permit(relay_fd, ip, expires, own_ports): install or refresh a permission"),
    METHOD(forget_permission, "forget_permission(relay_fd, ip): drop a permission"),
    METHOD(bind_channel, "bind_channel(relay_fd, number, peer, expires): install or refresh"),
    METHOD(forget_channel, "forget_channel(relay_fd, number): drop a channel"),
    METHOD(budget, "budget(relay_fd) -> float: the remaining bytes"),
    METHOD(set_budget, "set_budget(relay_fd, value)"),
    METHOD(spend, "spend(relay_fd, size) -> bool: take size bytes from the budget"),
    METHOD(drain_listener, "drain_listener(listener_fd, now, limit) -> [(data, source)]"),
    METHOD(drain_relay, "drain_relay(relay_fd, now, limit) -> datagrams read"),
    {"counters", (PyCFunction)(void (*)(void))FP_counters, METH_NOARGS, "counters() -> dict of the counters"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef FP_members[] = {
    {"batch", T_INT, offsetof(FastPath, batch), READONLY, "datagrams per recvmmsg"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "secureconnect.turn._fastpath.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_dealloc = (destructor)FP_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FastPath(batch=64, *, seed=None, buffer_size=65536): the UDP relay fast path "
              "of one data plane (docs/fastpath.md)",
    .tp_methods = FP_methods,
    .tp_members = FP_members,
    .tp_new = FP_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "secureconnect.turn._fastpath",
    .m_doc = "The compiled UDP fast path of the TURN server (docs/fastpath.md).", .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    crc_init();
    if (PyType_Ready(&FastPathType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "FastPath", (PyObject *)&FastPathType) < 0)
        Py_CLEAR(m);
    return m;
}
