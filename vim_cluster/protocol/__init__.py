"""Sans-I/O client protocol: frames, codec and the per-connection session state machine."""
