"""Modules e3nn-jax imports at start-up that a MACE model never uses, imported when first used.

e3nn-jax's package imports scipy.signal and scipy.spatial for its sphere-grid peak finder;
MACE never calls it, yet they (with scipy.stats, .interpolate, .optimize ... behind them)
hold ~60 MB of every process's resident memory, a tenth of a first run's peak. Until
something reads one of their attributes, a placeholder stands in ``sys.modules``; the
first read imports the real module, which from then on is what ``import`` and the parent
package hand out.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

DEFERRED = ("scipy.signal", "scipy.spatial")

_lock = threading.Lock()


class DeferredModule(types.ModuleType):
    """Stands for a module not imported yet; any attribute read imports it."""

    def __init__(self, spec):
        super().__init__(spec.name)
        self.__spec__ = spec  # `import` and importlib.util.find_spec look at it

    def __getattr__(self, name):
        return getattr(self._module(), name)

    def __dir__(self):
        return dir(self._module())

    def _module(self) -> types.ModuleType:
        with _lock:  # the import itself is not under this lock: importing one may read another
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)  # concurrent imports: the import system's own lock


def defer_unused_imports() -> None:
    """Put placeholders for ``DEFERRED`` in sys.modules (only those not imported yet)."""
    for name in DEFERRED:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:
            continue
        if spec is not None:
            sys.modules.setdefault(name, DeferredModule(spec))
