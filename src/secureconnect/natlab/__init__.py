"""NAT-traversal lab: Linux network namespaces, veth pairs and nftables NAT routers that each
show one RFC 4787 behaviour, our appliance inside, and WebRTC peers behind every pair of NATs.

- ``behaviours``: the six behaviours and the pure nftables rule text of each router;
- ``topology``: builds and tears down the namespaces (root only), cleans up after a crash;
- ``discovery``: coturn's ``turnutils_natdiscovery`` (RFC 5780) from inside a client namespace;
- ``peer``: one aiortc peer meeting another through our signaling (run as a subprocess);
- ``runner``: the appliance in the lab, discovery, every pair, the expected outcomes;
- ``report``: the matrix as text, JSON records and an SVG heat-map;
- ``command``: ``secureconnect natlab``.
"""
