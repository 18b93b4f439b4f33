"""Parity and latency of exported artifacts against their PyTorch reference."""
