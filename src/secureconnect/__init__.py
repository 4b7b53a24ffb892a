"""SecureConnect: STUN, TURN and WSS signaling for WebRTC under one trio supervisor."""

__version__ = "0.1.0"
