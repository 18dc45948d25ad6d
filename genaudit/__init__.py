"""genaudit: audit trained PyTorch generators for independent mechanisms.

Spectral density ratios between successive layers, hidden-layer stretch interventions and a
CI gate, after Besserve et al., "A theory of independent mechanisms for extrapolation in
generative models" (AAAI 2021).
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
