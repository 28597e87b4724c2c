"""Model architectures, checkpoint loading and numpy-only dataset readers.

Nothing is imported here on purpose: `edgepress.models.data` must load on a
device without torch, so each submodule is imported by name where needed.
"""
