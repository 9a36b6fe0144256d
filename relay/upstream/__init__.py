"""The upstream client: pooled HTTP/1.1 and HTTP/2 connections, the response body
decoder, and the routes that pick settings and pools per request path.
"""
