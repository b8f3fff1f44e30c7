"""Readers and writers of other programs' model formats, as pure functions (one module per format)."""
