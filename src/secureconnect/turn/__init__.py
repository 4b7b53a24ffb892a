"""TURN relay (RFC 8656): a sans-IO core (``core``, ``auth``, ``allocation``, ``requests``,
``relaypath``, ``peerpolicy``) and its trio I/O (``serve``)."""
