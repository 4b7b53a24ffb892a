"""TURN relay (RFC 8656). Arrives with the TURN issue."""
