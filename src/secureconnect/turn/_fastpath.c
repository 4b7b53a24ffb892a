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
 *
 * Files: fastpath.h (the constants, the structs and what crosses files), fastpath_tables.c (the
 * hash table's, permissions' and channels' lookups), fastpath_wire.c (the datagram path that
 * runs without the GIL), fastpath_loop.c (the drains and the data plane's epoll loop) and this
 * one (the Python side: arguments, methods, the type, the module).
 */
#include "fastpath.h" /* first: Python.h, whose pyconfig.h defines _GNU_SOURCE */
#include <structmember.h>

#include <sys/random.h>

/* ---- counters (docs/fastpath.md, the names of relaypath.RelayCounters) ------------------- */

/* Indexed by the enum in fastpath.h. */
static const char *const counter_names[N_COUNTERS] = {
    "to_peer_packets", "to_peer_bytes", "to_client_packets", "to_client_bytes",
    "dropped_no_allocation", "dropped_bad_channel", "dropped_no_permission",
    "dropped_bandwidth", "dropped_malformed", "dropped_own_port", "send_errors",
};

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
            for (entry_t *e = old[b], *next; e != NULL; e = next)
                next = e->next, fp_hash_link(s, e);
        }
        PyMem_Free(old);
    }
    entry_t *e = PyMem_Calloc(1, sizeof *e);
    if (e == NULL) return PyErr_NoMemory();
    e->relay_fd = relay_fd, e->listener_fd = listener_fd, e->client = ep, e->budget = budget;
    e->relay_family = sock_family(relay_fd), e->listener_family = sock_family(listener_fd);
    /* Python's dict of clients: the key now names this allocation (the core never has two) */
    entry_t *other = fp_hash_find(s, listener_fd, &ep);
    if (other != NULL) fp_hash_unlink(s, other);
    fp_hash_link(s, e);
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
    entry_t *keyed = fp_hash_find(s, e->listener_fd, &e->client); /* by_client.pop(key) */
    if (keyed != NULL) fp_hash_unlink(s, keyed);
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
    perm_t *perm = fp_find_perm(e, &ip);
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
    perm_t *perm = e != NULL ? fp_find_perm(e, &ip) : NULL;
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
    chan_t *ch = fp_find_chan(e, (unsigned)number);
    if (ch == NULL || !ep_eq(&ch->peer, &ep)) { /* a new binding, as relaypath's dicts do it */
        if (ch != NULL) {
            fp_pop_by_peer(e, &ch->peer);
        } else {
            if (reserve((void **)&e->chans, &e->cap_chans, e->n_chans, sizeof *ch) < 0)
                return NULL;
            ch = &e->chans[e->n_chans++];
            ch->number = (uint16_t)number;
        }
        fp_pop_by_peer(e, &ep); /* channel_by_peer[peer] = this channel */
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
    chan_t *ch = e != NULL && number >= 0 && number <= 0xFFFF ? fp_find_chan(e, (unsigned)number)
                                                              : NULL;
    if (ch != NULL) {
        fp_pop_by_peer(e, &ch->peer);
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
    return PyBool_FromLong(fp_take_budget(s, e, (size_t)size));
}

/* Readable while a drain runs in another thread (a test or a scrape that does not hold the
 * TURN lock): each counter is one aligned 64-bit word, so the snapshot may be mid-batch but
 * never torn; nothing else is read. */
static PyObject *FP_counters(FastPath *s, PyObject *Py_UNUSED(ignored)) {
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < N_COUNTERS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->counters[i]);
        if (v == NULL || PyDict_SetItemString(d, counter_names[i], v) < 0) Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* One allocation's own counters: (to_peer_packets, to_peer_bytes, to_client_packets,
 * to_client_bytes), counted beside the server's (fastpath_wire.c's count_relayed), for the
 * per-allocation accounting (docs/metrics.md). Read when asked, never per datagram; like
 * counters(), a snapshot of aligned 64-bit words, and the entry is never freed while a drain
 * runs (remove() needs the object idle). */
static PyObject *FP_traffic(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", NULL};
    int relay_fd;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i:traffic", kwlist, &relay_fd) ||
        (e = known(s, relay_fd)) == NULL)
        return NULL;
    const uint64_t *t = e->traffic;
    return Py_BuildValue("(KKKK)", (unsigned long long)t[TO_PEER_PACKETS],
                         (unsigned long long)t[TO_PEER_BYTES],
                         (unsigned long long)t[TO_CLIENT_PACKETS],
                         (unsigned long long)t[TO_CLIENT_BYTES]);
}

/* ---- Python side: the drains ----------------------------------------------------------- */

static PyObject *FP_drain_listener(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"listener_fd", "now", "limit", NULL};
    int fd;
    double now;
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "idn:drain_listener", kwlist, &fd, &now, &limit) ||
        !idle(s))
        return NULL;
    PyObject *kept;
    if (fp_drain_listener(s, fd, now, limit, &kept) < 0) return NULL;
    return kept != NULL ? kept : PyList_New(0);
}

static PyObject *FP_drain_relay(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"relay_fd", "now", "limit", NULL};
    int fd;
    double now;
    Py_ssize_t limit;
    entry_t *e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "idn:drain_relay", kwlist, &fd, &now, &limit) ||
        !idle(s))
        return NULL;
    if ((e = fd_entry(s, fd)) == NULL) return PyLong_FromLong(0); /* not ours: nothing read */
    return PyLong_FromSsize_t(fp_drain_relay(s, e, fd, now, limit));
}

static PyObject *FP_run_epoll(FastPath *s, PyObject *args, PyObject *kw) {
    return fp_run_epoll(s, args, kw);
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
    PyMem_Free(s->gmsgs);
    PyMem_Free(s->giov);
    PyMem_Free(s->groups);
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
    s->gmsgs = PyMem_Calloc(n, sizeof *s->gmsgs);
    s->giov = PyMem_Calloc(3 * n, sizeof *s->giov);
    s->groups = PyMem_Calloc(n, sizeof *s->groups);
    s->gso = 1;
    if (!s->buffers || !s->rmsgs || !s->riov || !s->rnames || !s->smsgs || !s->outs ||
        !s->keep || !s->buckets || !s->gmsgs || !s->giov || !s->groups)
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
    METHOD(traffic, "traffic(relay_fd) -> (to_peer_packets, to_peer_bytes, to_client_packets, "
                    "to_client_bytes): one allocation's relayed traffic"),
    METHOD(drain_listener, "drain_listener(listener_fd, now, limit) -> [(data, source)]"),
    METHOD(drain_relay, "drain_relay(relay_fd, now, limit) -> datagrams read"),
    METHOD(run_epoll, "run_epoll(epoll_fd, wake_fd, lock, clock, listeners, handlers, limit) "
                      "-> wake-ups: the data plane's loop until the wake-up pipe is readable"),
    {"counters", (PyCFunction)(void (*)(void))FP_counters, METH_NOARGS, "counters() -> dict of the counters"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef FP_members[] = {
    {"batch", T_INT, offsetof(FastPath, batch), READONLY, "datagrams per recvmmsg"},
    {"wakeups", T_ULONGLONG, offsetof(FastPath, wakeups), READONLY,
     "run_epoll's wake-ups with events, in all"},
    {"gso_messages", T_ULONGLONG, offsetof(FastPath, gso_messages), READONLY,
     "messages sent with UDP GSO (several datagrams to one address in one send)"},
    {"gso", T_INT, offsetof(FastPath, gso), READONLY,
     "1 while UDP GSO is used (0 once the kernel has refused a segmented send)"},
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
    fp_crc_init();
    if (PyType_Ready(&FastPathType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "FastPath", (PyObject *)&FastPathType) < 0)
        Py_CLEAR(m);
    return m;
}
