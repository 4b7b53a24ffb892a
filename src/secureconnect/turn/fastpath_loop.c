/* secureconnect.turn._fastpath: the drains, and the data plane's epoll loop (docs/fastpath.md).
 *
 * A drain reads one socket in batches with the GIL released (fastpath_wire.c does the datagram
 * work); a listener's drain hands back, as (data, source) tuples, what the fast path leaves for
 * Python (every STUN request, whatever is not established traffic).
 *
 * The loop (FastPath.run_epoll) is turn/dataplane.py's EpollThread.run in C, for the compiled
 * path only: epoll_wait without the GIL, then, per ready socket and with the server's lock held
 * (the lock the trio side shares: taken per ready socket, never across the wait), a relay
 * socket of the fast path's own is drained here without a Python call, a listening socket is
 * drained here and only what is left for Python goes to its callback, and any other socket's
 * handler is called as the Python loop would. It returns, with the count of wake-ups, when the
 * wake-up pipe is readable (EpollThread.stop); an exception from a callback or a handler ends
 * it with that exception, as it ends the Python loop. The Python loop cost about 1 µs per ready
 * socket in bytecode (the lock, the handler's closure, argument parsing): most of the per
 * wake-up cost of a relay that sees one datagram per wake-up.
 */
#include "fastpath.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_EVENTS 64

/* (ip, port) as the socket module prints it: inet_ntop, IPv6 trimmed to two items. */
static PyObject *address_of(const sockaddr_u *sa, socklen_t len) {
    char text[INET6_ADDRSTRLEN] = "";
    endpoint_t ep;
    fp_ep_from_sa(&ep, sa, len);
    if (ep.ip.family != 0 && inet_ntop(ep.ip.family, ep.ip.addr, text, sizeof text) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(si)", text, (int)ep.port);
}

/* The datagrams fastpath_wire.c kept for Python, appended to `list` as (data, source). */
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
        s->rmsgs[i].msg_hdr.msg_iov = &s->riov[i];
        s->rmsgs[i].msg_hdr.msg_iovlen = 1;
        s->rmsgs[i].msg_hdr.msg_name = &s->rnames[i];
    }
    return 0;
}

/* Drain a listening socket; *kept gets a list of what is left for Python, or stays NULL when
 * nothing is (the common case of relayed traffic: no list is made). -1 on a Python error. */
int fp_drain_listener(FastPath *s, int fd, double now, Py_ssize_t limit, PyObject **kept) {
    int stop = 0;
    *kept = NULL;
    while (limit > 0 && !stop) {
        int want = limit < s->batch ? (int)limit : s->batch, used;
        s->busy = 1, s->n_keep = 0;
        Py_BEGIN_ALLOW_THREADS
        int got = fp_recv_batch(s, fd, want, &used, &stop);
        for (int i = 0; i < got; i++) fp_on_client_datagram(s, fd, i, now);
        fp_flush(s);
        Py_END_ALLOW_THREADS
        s->busy = 0, limit -= used;
        if (s->n_keep > 0 && *kept == NULL && (*kept = PyList_New(0)) == NULL) return -1;
        if (s->n_keep > 0 && append_kept(s, *kept) < 0) {
            Py_CLEAR(*kept);
            return -1;
        }
    }
    return 0;
}

Py_ssize_t fp_drain_relay(FastPath *s, entry_t *e, int fd, double now, Py_ssize_t limit) {
    int stop = 0;
    Py_ssize_t total = 0;
    while (limit > 0 && !stop) {
        int want = limit < s->batch ? (int)limit : s->batch, used;
        s->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        int got = fp_recv_batch(s, fd, want, &used, &stop);
        for (int i = 0; i < got; i++) fp_on_peer_datagram(s, e, i, now);
        fp_flush(s);
        total += got;
        Py_END_ALLOW_THREADS
        s->busy = 0, limit -= used;
    }
    return total;
}

/* ---- the loop --------------------------------------------------------------------------- */

typedef struct {
    PyObject *acquire, *release, *clock, *listeners, *handlers;
    Py_ssize_t limit;
} loop_t;

static int call_void(PyObject *callable) {
    PyObject *r = PyObject_CallNoArgs(callable);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* One ready socket, the lock held: see the file's comment. */
static int dispatch(FastPath *s, const loop_t *lp, int fd) {
    PyObject *r = PyObject_CallNoArgs(lp->clock);
    double now = r == NULL ? -1.0 : PyFloat_AsDouble(r);
    Py_XDECREF(r);
    if (r == NULL || (now == -1.0 && PyErr_Occurred())) return -1;
    entry_t *e = fd_entry(s, fd);
    if (e != NULL) return fp_drain_relay(s, e, fd, now, lp->limit), 0;
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) return -1;
    PyObject *callback = PyDict_GetItemWithError(lp->listeners, key); /* borrowed */
    int listener = callback != NULL;
    if (!listener && !PyErr_Occurred()) callback = PyDict_GetItemWithError(lp->handlers, key);
    Py_DECREF(key);
    if (callback == NULL) return PyErr_Occurred() ? -1 : 0; /* removed meanwhile */
    Py_INCREF(callback); /* a callback may remove itself from the dict */
    int rc = 0;
    if (listener) {
        PyObject *kept;
        rc = fp_drain_listener(s, fd, now, lp->limit, &kept);
        if (kept != NULL) {
            r = PyObject_CallFunction(callback, "Od", kept, now);
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
            Py_DECREF(kept);
        }
    } else {
        r = PyObject_CallFunction(callback, "d", now);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    Py_DECREF(callback);
    return rc;
}

/* Wait, dispatch every ready socket, repeat; return at the wake-up pipe. */
static long run(FastPath *s, const loop_t *lp, int epfd, int wake) {
    struct epoll_event events[MAX_EVENTS];
    long wakeups = 0;
    for (;;) {
        int n, woken = 0;
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno == EINTR) continue;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        wakeups += n > 0;
        s->wakeups += n > 0;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == wake) {
                char sink[256];
                while (read(wake, sink, sizeof sink) > 0) {}
                woken = 1;
                continue;
            }
            if (call_void(lp->acquire) < 0) return -1;
            int rc = dispatch(s, lp, fd);
            PyObject *type, *value, *trace; /* release even after a failure, keeping it */
            PyErr_Fetch(&type, &value, &trace);
            int released = call_void(lp->release);
            if (type != NULL) {
                if (released < 0) PyErr_Clear();
                PyErr_Restore(type, value, trace);
            }
            if (rc < 0 || released < 0) return -1;
        }
        if (woken) return wakeups;
    }
}

PyObject *fp_run_epoll(FastPath *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"epoll_fd", "wake_fd", "lock", "clock", "listeners", "handlers",
                             "limit", NULL};
    int epfd, wake;
    PyObject *lock;
    loop_t lp;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiOOO!O!n:run_epoll", kwlist, &epfd, &wake,
                                     &lock, &lp.clock, &PyDict_Type, &lp.listeners,
                                     &PyDict_Type, &lp.handlers, &lp.limit))
        return NULL;
    if (s->busy) return PyErr_SetString(PyExc_RuntimeError, "FastPath is draining"), NULL;
    lp.acquire = PyObject_GetAttrString(lock, "acquire");
    lp.release = lp.acquire == NULL ? NULL : PyObject_GetAttrString(lock, "release");
    long wakeups = lp.release == NULL ? -1 : run(s, &lp, epfd, wake);
    Py_XDECREF(lp.acquire);
    Py_XDECREF(lp.release);
    return wakeups < 0 ? NULL : PyLong_FromLong(wakeups);
}
