"""The edge: one adapter per HTTP version towards clients (h11, h2, aioquic's H3),
the listener that tells them apart, and QUIC. Adapters turn their library's events
into calls on the core's streams and implement `ClientSide`.
"""
