"""The data sets, one module each (cifar10 and cifar100 share one).

A module here that defines ``SPECS`` (a tuple of
:class:`reid_dhm.data.registry.DatasetSpec`) is found by the registry on first use: a
new data set is one file in this package and nothing else. Modules import no torch at
import time; their readers import it when called. ``_``-prefixed modules hold shared
pieces and declare no data set.
"""
