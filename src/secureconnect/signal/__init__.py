"""WSS signaling. Arrives with the signaling issue."""
