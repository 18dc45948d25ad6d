"""genaudit: audit trained PyTorch generators for independent mechanisms.

Spectral density ratios between successive layers, hidden-layer stretch interventions and a
CI gate, after Besserve et al., "A theory of independent mechanisms for extrapolation in
generative models" (AAAI 2021).

The Python API (docs/api.md)::

    import genaudit
    model = genaudit.load("G.safetensors")             # the model the command line audits
    result = genaudit.sdr(model, torch.randn(512, 100, 1, 1))
    result.to_rows()                                   # one row per layer

Importing :mod:`genaudit` is cheap: the names below load their modules (and torch) when
first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_EXPORTS = {
    "load": "api",
    "load_checkpoint": "api",
    "sdr": "api",
    "stretch": "api",
    "spectral_dependence": "analysis.penalty",
    "GenericityPenalty": "analysis.repair",
    "Tracker": "analysis.tracking",
    "GenauditError": "errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .analysis.penalty import spectral_dependence as spectral_dependence
    from .analysis.repair import GenericityPenalty as GenericityPenalty
    from .analysis.tracking import Tracker as Tracker
    from .api import load as load
    from .api import load_checkpoint as load_checkpoint
    from .api import sdr as sdr
    from .api import stretch as stretch
    from .errors import GenauditError as GenauditError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'genaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
