"""One adapter per real backend. Only `vim_cluster.wiring` imports these."""
