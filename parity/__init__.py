"""Parity: datasets, transforms, metrics, DenseCRF, evaluation, training and the parity suite.

Kept import-light on purpose: submodules (``parity.datasets``, ``parity.evaluate``, ...) are
imported explicitly by whoever needs them.
"""
