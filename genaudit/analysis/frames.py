"""Results as pandas data frames, when pandas is installed (it is optional)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UsageError

__all__ = ["data_frame"]


def data_frame(rows: Sequence[dict[str, Any]]) -> Any:
    """``pandas.DataFrame(rows)``; a UsageError naming the extra to install without pandas."""
    try:
        import pandas
    except ImportError:
        raise UsageError(
            "to_pandas() needs pandas, which is not installed",
            'install it, or the extra: python3 -m pip install "genaudit[pandas]"',
        ) from None
    return pandas.DataFrame(list(rows))
