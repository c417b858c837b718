"""Optional comparison libraries, imported only where a comparison asks for them."""
from __future__ import annotations


def optional_flashinfer():
    """The ``flashinfer`` module, or ``None`` where it is not installed or does not import (comparisons with it are
    then skipped)."""
    try:
        import flashinfer
    except Exception:                                     # noqa: BLE001  (a broken install counts as absent)
        return None
    return flashinfer
