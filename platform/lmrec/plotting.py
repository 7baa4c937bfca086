"""matplotlib on the Agg backend when the ``plots`` extra is installed; reports skip their charts without it."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_noted = False


def pyplot():
    """``matplotlib.pyplot`` (Agg backend), or None after one log line saying how to get the charts."""
    global _noted
    try:
        import matplotlib
    except ImportError:
        if not _noted:
            log.warning("matplotlib is not installed: charts are skipped (pip install 'lmrec[plots]')")
            _noted = True
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
