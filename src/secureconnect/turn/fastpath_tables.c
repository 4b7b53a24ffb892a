/* secureconnect.turn._fastpath: the tables' lookups (the layout is in _fastpath.c's header).
 *
 * The (listening fd, client address) chained hash table, and each allocation's permissions and
 * channels. They keep the semantics of relaypath's dicts (clients by address, permissions by
 * IP, channels by number and by peer); addresses compare in binary. The array of entries by
 * relay fd is read through fd_entry (fastpath.h). The tables change only in _fastpath.c's
 * methods, with the GIL held (growing the array and the buckets, adding and dropping entries,
 * permissions and channels); the datagram path (fastpath_wire.c) looks them up and spends
 * the budgets.
 */
#include "fastpath.h"

static size_t hash_of(const FastPath *s, int listener_fd, const endpoint_t *ep) {
    uint64_t a, b;
    memcpy(&a, ep->ip.addr, 8);
    memcpy(&b, ep->ip.addr + 8, 8);
    uint64_t h = mix64(s->hash_key ^ (uint32_t)listener_fd ^ ((uint64_t)ep->port << 32) ^
                       ((uint64_t)ep->ip.family << 48));
    return (size_t)mix64(mix64(h ^ a) ^ b);
}

entry_t *fp_hash_find(const FastPath *s, int listener_fd, const endpoint_t *ep) {
    entry_t *e = s->buckets[hash_of(s, listener_fd, ep) & (s->n_buckets - 1)];
    while (e != NULL && !(e->listener_fd == listener_fd && ep_eq(&e->client, ep))) e = e->next;
    return e;
}

void fp_hash_link(FastPath *s, entry_t *e) {
    entry_t **head = &s->buckets[hash_of(s, e->listener_fd, &e->client) & (s->n_buckets - 1)];
    e->next = *head, *head = e, s->n_entries++;
}
void fp_hash_unlink(FastPath *s, entry_t *e) {
    entry_t **link = &s->buckets[hash_of(s, e->listener_fd, &e->client) & (s->n_buckets - 1)];
    while (*link != e) link = &(*link)->next;
    *link = e->next, s->n_entries--;
}

perm_t *fp_find_perm(const entry_t *e, const ip_t *ip) {
    for (Py_ssize_t i = 0; i < e->n_perms; i++)
        if (ip_eq(&e->perms[i].ip, ip)) return &e->perms[i];
    return NULL;
}
/* relaypath's permissions.get(ip, 0.0) <= now (RFC 8656 §9): not permitted. */
int fp_unpermitted(const perm_t *perm, double now) {
    return (perm != NULL ? perm->expires : 0.0) <= now;
}
chan_t *fp_find_chan(const entry_t *e, unsigned number) {
    for (Py_ssize_t i = 0; i < e->n_chans; i++)
        if (e->chans[i].number == number) return &e->chans[i];
    return NULL;
}
chan_t *fp_find_chan_by_peer(const entry_t *e, const endpoint_t *peer) {
    for (Py_ssize_t i = 0; i < e->n_chans; i++)
        if (e->chans[i].by_peer && ep_eq(&e->chans[i].peer, peer)) return &e->chans[i];
    return NULL;
}
void fp_pop_by_peer(const entry_t *e, const endpoint_t *peer) { /* channel_by_peer.pop */
    chan_t *ch = fp_find_chan_by_peer(e, peer);
    if (ch != NULL) ch->by_peer = 0;
}
