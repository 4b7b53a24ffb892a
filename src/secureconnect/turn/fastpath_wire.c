/* secureconnect.turn._fastpath: the datagram path (the layout is in _fastpath.c's header).
 *
 * Everything a drain does with the GIL released: recvmmsg into the batch's buffers, the
 * classification of each datagram with the tables' lookups (fastpath_tables.c), ChannelData
 * and Send indications from clients (FINGERPRINT's CRC-32, XOR-PEER-ADDRESS), ChannelData and
 * Data indications to clients (the PRNG for their transaction ids), and sendmmsg grouped by
 * destination socket, with UDP GSO for runs to one address. Nothing here allocates memory or
 * touches a Python object.
 *
 * Untrusted bytes: every read is bounded by the received length, checked before the read.
 */
#include "fastpath.h"

static uint32_t crc_table[256];

/* ---- small helpers --------------------------------------------------------------------- */

static inline unsigned get16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xFFFF); }

/* CRC-32 (IEEE 802.3, what zlib.crc32 computes), for FINGERPRINT (RFC 8489 §14.7). */
void fp_crc_init(void) {
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
 * §6: random; an indication needs no secrecy). The finaliser (mix64, fastpath.h) also mixes the
 * hash keys. */
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

/* A received source address; IPv6 flow info and scope id are dropped, as udpplane does. */
void fp_ep_from_sa(endpoint_t *ep, const sockaddr_u *sa, socklen_t len) {
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

/* ---- the datagram path (runs without the GIL) ------------------------------------------ */

/* The per-allocation bandwidth cap, with relaypath's float arithmetic exactly (spend_to_peer,
 * wrap_peer_data): subtract, and add back when that went below 0. */
int fp_take_budget(FastPath *s, entry_t *e, size_t size) {
    e->budget -= (double)size;
    if (e->budget < 0) {
        e->budget += (double)size;
        s->counters[DROP_BANDWIDTH]++;
        return 0;
    }
    return 1;
}

/* Count a relayed datagram of `size` payload bytes in direction `packets` (TO_PEER_PACKETS or
 * TO_CLIENT_PACKETS; the bytes' index follows it), server-wide and for its allocation. */
static inline void count_relayed(FastPath *s, entry_t *e, int packets, size_t size) {
    s->counters[packets]++;
    s->counters[packets + 1] += size;
    e->traffic[packets]++;
    e->traffic[packets + 1] += size;
}

/* A failed send: counted; what went to a client is taken back (udpplane.relay_drain), what
 * went to a peer stays counted (udpplane.forward_channel_data, send_to_peer), for the server
 * and for the allocation alike. */
static void send_failed(FastPath *s, const out_t *o) {
    s->counters[SEND_ERRORS]++;
    if (o->to_client) {
        s->counters[TO_CLIENT_PACKETS]--;
        s->counters[TO_CLIENT_BYTES] -= o->size;
        o->entry->traffic[TO_CLIENT_PACKETS]--;
        o->entry->traffic[TO_CLIENT_BYTES] -= o->size;
    }
}

/* Queue a datagram of header_len bytes (written by the caller into the result's header), the
 * payload, and pad zero bytes. The destination is resolved for the socket's family as Python's
 * sendto does (getaddrinfo): an IPv4-mapped address becomes IPv4 for an IPv4 socket, and any
 * other address of the other family fails, counted like a failed send. */
static out_t *queue_out(FastPath *s, entry_t *e, int fd, int family, const endpoint_t *dest,
                        int to_client, const uint8_t *payload, size_t size, size_t header_len,
                        size_t pad) {
    static const uint8_t zeros[4] = {0, 0, 0, 0};
    out_t *o = &s->outs[s->n_out];
    endpoint_t to = *dest;
    o->fd = fd, o->to_client = to_client, o->size = (uint32_t)size, o->entry = e;
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
static void send_plain(FastPath *s, int pos, int end) {
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

/* ---- UDP GSO ------------------------------------------------------------------------------
 * A run of datagrams to one address, all of one size, goes out as one message with a
 * UDP_SEGMENT control message (Linux 4.18): the kernel walks its stack once and cuts the
 * datagrams at the end (bench/gso_probe.py: 0.42x the sender's CPU per datagram at 200 B on
 * loopback). The receiver sees the same datagrams. A relay to one busy client is exactly such a
 * run. Runs stop at 64 segments (UDP_MAX_SEGMENTS) or 64,000 bytes, and only datagrams that fit
 * a 1500-byte path (1452 bytes: IPv6 and UDP headers) are grouped, so a segment never exceeds
 * an Ethernet MTU, which the kernel refuses (EINVAL). */

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h */
#endif
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 64000
#define GSO_MAX_SEGMENT 1452

static size_t out_length(const struct mmsghdr *m) {
    size_t total = 0;
    for (size_t k = 0; k < m->msg_hdr.msg_iovlen; k++) total += m->msg_hdr.msg_iov[k].iov_len;
    return total;
}

static int same_address(const struct mmsghdr *a, const struct mmsghdr *b) {
    return a->msg_hdr.msg_namelen == b->msg_hdr.msg_namelen &&
           memcmp(a->msg_hdr.msg_name, b->msg_hdr.msg_name, a->msg_hdr.msg_namelen) == 0;
}

/* outs[pos:end] as messages in s->gmsgs, a run of one address and one size per message;
 * returns how many messages. */
static int group_runs(FastPath *s, int pos, int end) {
    int g = 0, used = 0;
    for (int i = pos, j; i < end; i = j, g++) {
        const struct mmsghdr *first = &s->smsgs[i];
        size_t size = out_length(first), total = size;
        for (j = i + 1; j < end && j - i < GSO_MAX_SEGMENTS && size <= GSO_MAX_SEGMENT &&
                        total + size <= GSO_MAX_BYTES && same_address(first, &s->smsgs[j]) &&
                        out_length(&s->smsgs[j]) == size;
             j++)
            total += size;
        struct mmsghdr *m = &s->gmsgs[g];
        group_t *group = &s->groups[g];
        memset(m, 0, sizeof *m);
        m->msg_hdr.msg_name = first->msg_hdr.msg_name;
        m->msg_hdr.msg_namelen = first->msg_hdr.msg_namelen;
        m->msg_hdr.msg_iov = &s->giov[used];
        for (int k = i; k < j; k++)
            for (size_t v = 0; v < s->smsgs[k].msg_hdr.msg_iovlen; v++)
                s->giov[used++] = s->smsgs[k].msg_hdr.msg_iov[v];
        m->msg_hdr.msg_iovlen = (size_t)(&s->giov[used] - m->msg_hdr.msg_iov);
        group->first = i, group->count = j - i;
        if (j - i > 1) {
            m->msg_hdr.msg_control = group->control.buf;
            m->msg_hdr.msg_controllen = sizeof group->control.buf;
            struct cmsghdr *cm = CMSG_FIRSTHDR(&m->msg_hdr);
            cm->cmsg_level = IPPROTO_UDP, cm->cmsg_type = UDP_SEGMENT; /* SOL_UDP */
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment = (uint16_t)size;
            memcpy(CMSG_DATA(cm), &segment, sizeof segment);
        }
    }
    return g;
}

/* outs[pos:end] (one socket) with GSO where runs allow it. Any failure sends the rest the
 * plain way from the failed message on (a segmented message fails whole, but Python's
 * accounting fails one datagram: a queued ICMP error is the first one's); a kernel or device
 * that cannot segment (EIO: no checksum offload; EOPNOTSUPP, ENOPROTOOPT: too old) turns GSO
 * off for good. */
static void send_run(FastPath *s, int pos, int end) {
    int n_groups = s->gso ? group_runs(s, pos, end) : end - pos;
    if (n_groups == end - pos) {
        send_plain(s, pos, end); /* nothing to group: exactly the plain path */
        return;
    }
    int fd = s->outs[pos].fd;
    for (int g = 0; g < n_groups;) {
        int n = sendmmsg(fd, &s->gmsgs[g], (unsigned)(n_groups - g), 0);
        if (n > 0) {
            for (int k = g; k < g + n; k++) s->gso_messages += s->groups[k].count > 1;
            g += n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && s->groups[g].count > 1 &&
            (errno == EIO || errno == EOPNOTSUPP || errno == ENOPROTOOPT))
            s->gso = 0;
        send_plain(s, s->groups[g].first, end);
        return;
    }
}

/* Send everything queued, one sendmmsg run per consecutive destination socket. */
void fp_flush(FastPath *s) {
    for (int start = 0, end; start < s->n_out; start = end) {
        for (end = start + 1; end < s->n_out && s->outs[end].fd == s->outs[start].fd; end++) {}
        send_run(s, start, end);
    }
    s->n_out = 0;
}

/* Receive up to `want` datagrams into the buffers; returns how many. *used counts the
 * iterations spent, skipped errors included (udpplane's drains spend one of BATCH on each);
 * *stop is set at EAGAIN (nothing more to read) and when the descriptor is gone. */
int fp_recv_batch(FastPath *s, int fd, int want, int *used, int *stop) {
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
    const chan_t *ch = fp_find_chan(e, get16(p));
    if (ch == NULL || ch->expires <= now) {
        s->counters[DROP_BAD_CHANNEL]++;
        return;
    }
    /* RFC 8656 §9: relaying needs a permission for the peer's IP address. */
    if (fp_unpermitted(fp_find_perm(e, &ch->peer.ip), now)) {
        s->counters[DROP_NO_PERMISSION]++;
        return;
    }
    if (!fp_take_budget(s, e, length)) return;
    count_relayed(s, e, TO_PEER_PACKETS, length);
    queue_out(s, e, e->relay_fd, e->relay_family, &ch->peer, 0, p + 4, length, 0, 0);
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
    const perm_t *perm = fp_find_perm(e, &peer.ip);
    if (fp_unpermitted(perm, now)) {
        s->counters[DROP_NO_PERMISSION]++;
        return 1;
    }
    for (Py_ssize_t i = 0; perm != NULL && i < perm->n_own; i++) {
        if (perm->own_ports[i] == peer.port) {
            s->counters[DROP_OWN_PORT]++;
            return 1;
        }
    }
    if (!fp_take_budget(s, e, data_len)) return 1;
    count_relayed(s, e, TO_PEER_PACKETS, data_len);
    queue_out(s, e, e->relay_fd, e->relay_family, &peer, 0, data, data_len, 0, 0);
    return 1;
}

/* One datagram on a listening socket (udpplane._listener_drain): ChannelData (first two bits
 * 01, RFC 8656 §12) and plain Send indications are handled; the rest is kept for Python. */
void fp_on_client_datagram(FastPath *s, int listener_fd, int i, double now) {
    const struct mmsghdr *m = &s->rmsgs[i];
    const uint8_t *p = s->buffers + (size_t)i * (size_t)s->buffer_size;
    size_t n = m->msg_len;
    if (m->msg_hdr.msg_flags & MSG_TRUNC) { /* larger than a buffer: no valid message is */
        s->counters[DROP_MALFORMED]++;
        return;
    }
    endpoint_t source;
    fp_ep_from_sa(&source, &s->rnames[i], m->msg_hdr.msg_namelen);
    if (n >= 1 && p[0] >> 6 == 1) {
        client_channel_data(s, fp_hash_find(s, listener_fd, &source), p, n, now);
        return;
    }
    if (n >= 2 && get16(p) == SEND_INDICATION &&
        client_send(s, fp_hash_find(s, listener_fd, &source), p, n, now))
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
void fp_on_peer_datagram(FastPath *s, entry_t *e, int i, double now) {
    const struct mmsghdr *m = &s->rmsgs[i];
    const uint8_t *p = s->buffers + (size_t)i * (size_t)s->buffer_size;
    size_t n = m->msg_len;
    if (m->msg_hdr.msg_flags & MSG_TRUNC) {
        s->counters[DROP_MALFORMED]++;
        return;
    }
    endpoint_t peer;
    fp_ep_from_sa(&peer, &s->rnames[i], m->msg_hdr.msg_namelen);
    /* RFC 8656 §11.3: without a permission for the peer's IP the datagram is discarded. */
    if (fp_unpermitted(fp_find_perm(e, &peer.ip), now)) {
        s->counters[DROP_NO_PERMISSION]++;
        return;
    }
    if (n > MAX_INDICATION_PAYLOAD) { /* fits no Data indication's 16-bit length */
        s->counters[DROP_MALFORMED]++;
        return;
    }
    if (!fp_take_budget(s, e, n)) return;
    count_relayed(s, e, TO_CLIENT_PACKETS, n);
    const chan_t *ch = fp_find_chan_by_peer(e, &peer);
    if (ch != NULL && ch->expires > now) {
        /* RFC 8656 §12.6 ChannelData; over UDP not padded (§12.5) */
        out_t *o = queue_out(s, e, e->listener_fd, e->listener_family, &e->client, 1, p, n, 4,
                             0);
        if (o != NULL) put16(o->header, ch->number), put16(o->header + 2, (unsigned)n);
        return;
    }
    /* a Data indication (RFC 8656 §11.3), its header's length known once it is written */
    out_t *o = queue_out(s, e, e->listener_fd, e->listener_family, &e->client, 1, p, n,
                         HEADER_MAX, -n & 3);
    if (o != NULL) o->iov[0].iov_len = data_indication(s, o->header, &peer, n);
}
