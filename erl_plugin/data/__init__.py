"""Data: synthetic rain, LMDB writing and shared LMDB environments."""
