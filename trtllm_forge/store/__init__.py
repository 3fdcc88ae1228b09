"""Content-addressed artifact store: digests, stat memo, locks, manifests."""
