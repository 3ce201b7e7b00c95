"""overopt: measure reward over-optimization in Direct Alignment Algorithms (DPO, IPO, SLiC, ...).

The package lives in ``platform/overopt``; ``platform/`` itself is only a source root and is
deliberately *not* a package (it would shadow Python's standard-library ``platform`` module).
"""

__version__ = "0.1.0"
