"""WSS signaling: the sans-IO hub and wire contract (``hub``, ``messages``, ``tokens``,
``http``, ``ice``, ``exposition``), the trio I/O (``serve``) and a Python client (``client``)."""
