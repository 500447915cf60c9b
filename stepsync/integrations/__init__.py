"""Framework integrations: make a training framework's own step the current stepsync step.

``register_hooks()`` (called by ``stepsync.patch()``) installs a small patch into each supported
framework as soon as it is imported, or at once if it already is. Nothing here imports a
framework itself, so ``import stepsync`` stays free of torch, transformers and lightning.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from types import ModuleType

from stepsync.integrations._common import Installed, warn_once

__all__ = ["installed", "register_hooks", "unregister_hooks", "warn_once"]

# Module whose import triggers the patch -> stepsync module holding `install(module)`.
# `install` returns the wrapt handles it put in place, as (owner, attribute, handle).
_TARGETS: dict[str, str] = {
    "transformers.trainer_callback": "stepsync.integrations.transformers",
    "lightning.pytorch.loggers.wandb": "stepsync.integrations.lightning",
    "pytorch_lightning.loggers.wandb": "stepsync.integrations.lightning",
}

_lock = threading.RLock()
_active = False  # between register_hooks() and unregister_hooks()
_registered: set[str] = set()
_installed: dict[str, Installed] = {}
_installing: set[str] = set()


def register_hooks() -> None:
    """Patch each supported framework now if imported, else when it is imported (idempotent)."""
    global _active
    import wrapt

    with _lock:
        _active = True
        fresh = [name for name in _TARGETS if name not in _registered]
        _registered.update(fresh)
        again = [n for n in _TARGETS if n not in fresh and n in sys.modules and n not in _installed]
    # Outside the lock: a hook fires in whichever thread imports the framework, holding that
    # module's import lock, and then takes ours; holding ours across an import could deadlock.
    for name in fresh:
        # Fires at once when the module is already imported, else right after its import.
        wrapt.register_post_import_hook(_on_import, name)
    for name in again:
        # Undone earlier by unregister_hooks(): wrapt fires a hook only once per import.
        _on_import(sys.modules[name])


def unregister_hooks() -> None:
    """Remove every framework patch put in place; later imports of a framework stay unpatched."""
    global _active
    import wrapt

    with _lock:
        _active = False
        undo = list(_installed.values())
        _installed.clear()
    for handles in undo:
        for owner, attribute, handle in reversed(handles):
            try:
                wrapt.unwrap_object(owner, attribute, handle, missing_ok=True)
            except Exception as exc:  # another library wrapped on top of ours: leave it be
                warn_once(f"unwrap:{attribute}", exc)


def installed() -> list[str]:
    """Names of the framework modules currently patched (for tests and diagnostics)."""
    with _lock:
        return sorted(_installed)


def _on_import(module: ModuleType) -> None:
    """wrapt post-import hook: an exception here would break the user's import, so none escapes."""
    name = getattr(module, "__name__", repr(module))
    try:
        with _lock:
            if not _active or name in _installed or name in _installing:
                return
            _installing.add(name)
        try:
            install: Callable[[ModuleType], Installed] = importlib.import_module(
                _TARGETS[name]
            ).install
            handles = install(module)
            with _lock:
                _installed[name] = handles
        finally:
            with _lock:
                _installing.discard(name)
    except Exception as exc:
        warn_once(f"install:{name}", exc)
