"""The backbones, one module each; every module declares its registry entries.

A module here that defines ``MODELS`` (``(name, ModelEntry)`` pairs, usually from
:func:`reid_dhm.models.registry.model_pair`) is found by the registry on first use: a
new backbone is one file in this package and nothing else.
"""
