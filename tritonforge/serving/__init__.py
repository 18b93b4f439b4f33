"""Serving: the Triton model repository writer (and, later, the local server and client)."""
