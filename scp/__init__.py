"""DIMSE in and out: the C-ECHO / C-STORE listener, its association policy, and the SCU side.

Knows nothing of models. Stores what it receives through :mod:`uronode.store`.
"""
