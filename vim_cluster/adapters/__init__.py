"""One adapter per real backend. Only `node.wiring` imports these."""
