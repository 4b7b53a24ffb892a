"""NAT-traversal lab: Linux network namespaces, veth pairs and nftables NAT routers that each
show one RFC 4787 behaviour, plus RFC 5780 discovery that checks what a client sees.

``behaviours`` holds the six behaviours and the pure nftables rule text; ``topology`` builds and
tears down the namespaces (root only); ``discovery`` runs coturn's ``turnutils_natdiscovery``
from inside a client namespace and classifies its answer.
"""
