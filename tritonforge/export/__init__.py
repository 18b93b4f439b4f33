"""Exporters: the Family contract, the per-family packages, and the export pipeline."""
