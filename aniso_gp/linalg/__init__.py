"""Shared linear-algebra core: pure JAX functions on arrays (no NumPyro, no ArviZ)."""
