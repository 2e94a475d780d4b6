"""Deterministic, seeded data generators (arithmetic world, English text)."""
