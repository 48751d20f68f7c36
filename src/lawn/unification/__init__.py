"""Micro-structured weight unification and pruning, trained with ADMM (after Lin et al., arXiv 2106.08301).

Blocks of ``n`` input-channel entries are kept dense, *unified* (one magnitude × fixed signs) or pruned (zero).
``project`` is the Euclidean projection, ``ADMM`` trains towards it, ``harden`` freezes it into a parametrization,
``export``/``load`` write and read a compact file, ``compression_report`` counts bits and multiplications.
Reached as ``lawn.unification.<name>``: names such as ``project``, ``export`` and ``load`` are too generic for
the top-level ``lawn`` namespace.
"""

from lawn.unification.admm import ADMM
from lawn.unification.blocks import DENSE, PRUNED, UNIFIED, BlockSpec, project
from lawn.unification.export import export, load
from lawn.unification.parametrization import harden, hardened_layers
from lawn.unification.report import CompressionReport, LayerReport, compression_report
from lawn.unification.unified_blocks import UnifiedBlocks

__all__ = [
    "ADMM",
    "DENSE",
    "PRUNED",
    "UNIFIED",
    "BlockSpec",
    "CompressionReport",
    "LayerReport",
    "UnifiedBlocks",
    "compression_report",
    "export",
    "hardened_layers",
    "harden",
    "load",
    "project",
]
