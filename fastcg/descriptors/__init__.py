"""Descriptors: the math of an op as data (plain Python, cached), packed once into the tables
its kernels read. ``symmetric_contraction``: MACE's product basis."""
