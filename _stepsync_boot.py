"""Zero-code activation of stepsync, imported by ``stepsync-activate.pth`` at interpreter start-up.

Runs in every Python process of the environment, so it is stdlib-only and imports nothing new:
when ``STEPSYNC_ENABLED`` (or the predecessor's ``WANDB_STEP_FIX_ENABLED``) is on, it arranges
for ``stepsync.patch()`` to run as soon as both wandb and stepsync are fully imported, whichever
comes first, and never lets an error escape into the user's ``import wandb``.
"""

import os
import sys

TYPE_CHECKING = False  # typing is not loaded at start-up; mypy still reads the block below
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from importlib.machinery import ModuleSpec
    from types import ModuleType

ENV_VARS = ("STEPSYNC_ENABLED", "WANDB_STEP_FIX_ENABLED")
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
FALSE_VALUES = frozenset({"0", "false", "no", "off"})
#: Modules whose completed import may trigger the patch: wandb (the usual case) and stepsync
#: (when the user imports stepsync first, wandb finishes loading while stepsync is half-built).
HOOKED_MODULES = ("wandb", "stepsync")

_reported = False
_applied = False


def parse_flag(value: "str | None") -> "bool | None":
    """Read one variable's value: True/False when recognised (unset or blank: False), else None."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in TRUE_VALUES:
        return True
    if not text or text in FALSE_VALUES:
        return False
    return None


def env_state(environ: "Mapping[str, str] | None" = None) -> "tuple[bool, str | None]":
    """Decide activation from the environment: (enabled, warning text for an unrecognised value).

    The first variable of ``ENV_VARS`` that is set and non-blank decides, so ``STEPSYNC_ENABLED=0``
    switches off an inherited ``WANDB_STEP_FIX_ENABLED=true``.
    """
    env = os.environ if environ is None else environ
    for name in ENV_VARS:
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        flag = parse_flag(raw)
        if flag is None:
            return False, (
                f"stepsync: ignoring {name}={raw!r}: expected 1, true, yes or on to enable "
                "(0, false, no or off to disable); wandb is NOT patched in this process"
            )
        return flag, None
    return False, None


def _report_failure(exc: BaseException) -> None:
    """Tell the user once that activation failed: one stderr line, the traceback to logging."""
    global _reported
    if _reported:
        return
    _reported = True
    try:
        sys.stderr.write(
            f"stepsync: automatic activation failed ({type(exc).__name__}: {exc}); "
            "wandb runs unpatched in this process\n"
        )
        import logging

        logger = logging.getLogger("stepsync")
        if logger.hasHandlers():
            logger.error("automatic activation of stepsync failed", exc_info=exc)
    except Exception:  # reporting must never break the import of wandb either
        pass


def _initializing(name: str) -> bool:
    """True while module ``name`` is still executing (imported, but not finished)."""
    module = sys.modules.get(name)
    return module is not None and bool(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
    )


def apply_patch() -> bool:
    """Import stepsync and patch wandb once; report, never raise (that would break the import)."""
    global _applied
    if _applied:
        return True
    try:
        import stepsync

        patch = getattr(stepsync, "patch", None)
        if patch is None:
            raise RuntimeError(f"{stepsync.__name__} at {stepsync.__file__} has no patch()")
        patch()
    except Exception as exc:
        _report_failure(exc)
        return False
    _applied = True
    return True


class _PostImportHook:
    """Meta-path finder that calls ``apply_patch`` once wandb and stepsync have both executed.

    It asks the finders after it for the real spec and wraps only that loader's ``exec_module``,
    so each import stays the module's own. Stdlib-only on purpose: ``import wrapt`` costs ~60 ms,
    which every process of the environment (pip, data-loader workers, ...) would pay.
    """

    def __init__(self) -> None:
        self.pending = set(HOOKED_MODULES)
        self.running: set[str] = set()
        self.searching: set[str] = set()  # re-entrancy guard while asking the other finders

    def find_spec(
        self, fullname: str, path: "object" = None, target: "object" = None
    ) -> "ModuleSpec | None":
        """Return the next finder's spec for a hooked module, its loader hooked; else None."""
        if fullname not in self.pending or fullname in self.searching:
            return None
        # `importlib.util.find_spec("wandb")` (transformers' and accelerate's availability
        # checks) also lands here without importing: stay pending until exec_module runs.
        self.searching.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                find_spec = getattr(finder, "find_spec", None)
                if finder is self or find_spec is None:
                    continue
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    break
            if spec is None:
                return None  # not installed (yet): a later sys.path may find it
            loader = spec.loader
            original = getattr(loader, "exec_module", None)
            if loader is not None and original is not None:
                setattr(loader, "exec_module", self._hooked(fullname, loader, original))  # noqa: B010
        except Exception as exc:
            _report_failure(exc)
            return None
        finally:
            self.searching.discard(fullname)
        return spec  # type: ignore[no-any-return]

    def _hooked(
        self, name: str, loader: object, original: "Callable[[ModuleType], None]"
    ) -> "Callable[[ModuleType], None]":
        """Build the replacement ``exec_module``: run the module's own, restore it, then patch."""

        def exec_module(module: "ModuleType") -> None:
            self.pending.discard(name)
            self.running.add(name)
            try:
                original(module)
            except BaseException:
                self.pending.add(name)  # a failed import may be retried: hook that one too
                raise
            finally:
                self.running.discard(name)
                try:  # noqa: SIM105  # contextlib is not loaded at start-up
                    delattr(loader, "exec_module")
                except AttributeError:
                    pass
            if not self.pending:
                self.remove()
            self.imported(name)

        return exec_module

    def imported(self, name: str) -> None:
        """React to the finished import of ``name``: patch unless the other module is mid-import."""
        if name == "wandb" and ("stepsync" in self.running or _initializing("stepsync")):
            return  # stepsync imports wandb itself; its own hook patches once it is complete
        if name == "stepsync" and (
            "wandb" not in sys.modules or "wandb" in self.running or _initializing("wandb")
        ):
            return  # the wandb hook will patch
        apply_patch()

    def remove(self) -> None:
        """Take this finder out of ``sys.meta_path`` (safe: called outside any finder loop)."""
        try:  # noqa: SIM105
            sys.meta_path.remove(self)
        except ValueError:
            pass


def activate(environ: "Mapping[str, str] | None" = None) -> bool:
    """Arm the patch if the environment asks for it; True when armed or applied."""
    enabled, warning = env_state(environ)
    if warning is not None:
        try:  # noqa: SIM105  # no usable stderr: stay silent rather than crash start-up
            sys.stderr.write(warning + "\n")
        except Exception:
            pass
    if not enabled:
        return False
    if "wandb" in sys.modules and not _initializing("wandb"):
        if _initializing("stepsync"):
            return False  # imported from inside stepsync's own import: too early to patch here
        return apply_patch()
    if not any(isinstance(finder, _PostImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PostImportHook())
    return True


activate()
