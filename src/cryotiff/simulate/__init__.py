"""Synthetic detector movies for tests, the demo and benchmarks.

Submodules: ``detectors`` (Falcon blobs, K2/K3 Poisson counts), ``gain_normalised`` (counts x
per-pixel gain with Digital Micrograph style defect correction), ``eer`` (EER event streams and
files), ``write`` (MRC movie files in every mode, including packed 4-bit and big-endian).
"""
