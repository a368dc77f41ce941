"""vim-cluster: a clustered instant-messaging relay server."""

__version__ = "0.1.0"
