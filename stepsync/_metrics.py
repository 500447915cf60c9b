"""The user's metric definitions, and stepsync's axis declarations, which only ever add to them.

wandb-core combines definitions this way (``runmetric``, wandb 0.31): a definition by name beats
every glob; a later definition of a name merges with the earlier one unless ``overwrite=True``
(the step metric becomes the last one given, ``hidden`` and ``step_sync`` are ORed, summary
options are added). So stepsync declares nothing while every row's native step equals its
logical step: the run looks exactly like the native one. From the first row where the two differ
(the *switch*), each key is declared by name with ``step_metric=<axis>, step_sync=False``,
carrying the options of the user's glob that matched it (a declaration by name would otherwise
hide that glob), and never for a key the user put on an axis of their own or uses as an axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: One declaration to make: the metric's name and ``define_metric`` keyword arguments.
Declaration = tuple[str, dict[str, Any]]

#: How many top-level keys a run remembers as looked at: a job that logs new keys every step
#: (``eval/sample_123``) keeps paying the look instead of growing the set forever.
SEEN_MAX = 65_536


@dataclass(frozen=True)
class Definition:
    """What the user's ``define_metric`` calls for one name or glob add up to."""

    step_metric: str | None = None
    step_sync: bool = False
    hidden: bool = False
    summary: frozenset[str] = field(default_factory=frozenset)

    def merged(self, later: Definition) -> Definition:
        """wandb-core's merge of a later definition into this one (without ``overwrite``)."""
        return Definition(
            step_metric=later.step_metric or self.step_metric,
            step_sync=self.step_sync or later.step_sync,
            hidden=self.hidden or later.hidden,
            summary=self.summary | later.summary,
        )


class MetricDefinitions:
    """Tracks the user's definitions of one run and says what stepsync must declare, and when."""

    def __init__(self, axis_key: str) -> None:
        self._axis = axis_key
        self._names: dict[str, Definition] = {}
        self._globs: dict[str, Definition] = {}  # prefix (the name without its `*`) -> definition
        self._step_keys: set[str] = set()  # every key the user named as a step metric
        self._declared: set[str] = set()  # keys stepsync put on its axis
        self._charted: set[str] = set()  # every numeric key (nested: dotted) committed so far
        self._seen: set[str] = set()  # top-level keys already looked at, with a flat value
        #: True from the first row whose native step differs from its logical step.
        self.switched = False

    def user_defined(
        self,
        name: str,
        *,
        step_metric: str | None = None,
        step_sync: bool | None = None,
        hidden: bool | None = None,
        summary: str | None = None,
        overwrite: bool | None = None,
    ) -> list[Declaration]:
        """Record one ``define_metric`` of the user's; return what stepsync must declare again."""
        ops = frozenset(op.strip().lower() for op in summary.split(",")) if summary else None
        definition = Definition(
            step_metric=step_metric,
            # wandb's own default: step_sync is on when a step metric is given
            step_sync=bool(step_sync) if step_sync is not None else step_metric is not None,
            hidden=bool(hidden),
            summary=ops or frozenset(),
        )
        glob = name.endswith("*")
        table, key = (self._globs, name[:-1]) if glob else (self._names, name)
        table[key] = definition if overwrite else table.get(key, Definition()).merged(definition)
        redo: set[str] = set()
        if step_metric is not None:
            self._step_keys.add(step_metric)
            if step_metric in self._declared:  # stepsync had put the user's own axis on its axis
                redo.add(step_metric)
        if glob:
            redo.update(k for k in self._declared if k.startswith(key) and k not in self._names)
        elif name in self._declared:
            redo.add(name)  # now by name: what stepsync declared for it must follow
        if not self.switched:
            return []
        return [self._redeclaration(k) for k in sorted(redo)]

    def committed(self, row: Mapping[str, Any]) -> list[Declaration]:
        """A row was committed: what to declare for its numeric keys not seen before.

        Only numbers are charted against a step; wandb-core also drops a key from the summary
        when a key whose value is a dict (nested values, media, histograms) is defined
        (measured), so nested values are declared leaf by leaf, by their dotted names.
        """
        seen = self._seen
        if seen.issuperset(row):
            return []
        for key, value in row.items():
            # a nested value may bring new leaves later, so its key is looked at every time
            if type(value) is not dict and len(seen) < SEEN_MAX:
                seen.add(key)
        charted = self._charted
        new = [
            name
            for leaf, value in leaves(row)
            if (name := dotted(leaf)) not in charted and _is_number(value)
        ]
        if not new:
            return []
        self._charted.update(new)
        return self._declarations(new) if self.switched else []

    def switch(self) -> list[Declaration]:
        """The first row whose native step differs: every key so far goes on the axis."""
        self.switched = True
        return [(self._axis, {}), *self._declarations(sorted(self._charted))]

    def _declarations(self, keys: Iterable[str]) -> list[Declaration]:
        declarations = []
        for key in keys:
            if key in self._declared or key == self._axis or key.startswith("_"):
                continue
            options = self._axis_options(key)
            if options is not None:
                self._declared.add(key)
                declarations.append((key, options))
        return declarations

    def only_stepsync_defines(self) -> bool:
        """True once stepsync declared metrics and the user defined none."""
        return self.switched and not self._names and not self._globs

    def summary_of(self, key: str) -> frozenset[str]:
        """The summary options the user set for ``key`` (empty: wandb's default, the last value)."""
        definition = self._effective(key)
        return definition.summary if definition is not None else frozenset()

    # ------------------------------------------------------------------ helpers

    def _effective(self, key: str) -> Definition | None:
        """The user's definition that applies to ``key``: by name, else the longest glob."""
        definition = self._names.get(key)
        if definition is not None:
            return definition
        prefixes = [prefix for prefix in self._globs if key.startswith(prefix)]
        return self._globs[max(prefixes, key=len)] if prefixes else None

    def _axis_options(self, key: str) -> dict[str, Any] | None:
        """How stepsync declares ``key``: what the user's definitions give it, plus the axis.

        None when the user's own axis applies (a step metric by name or glob, or the key is
        the user's step metric). A glob's options are carried into the declaration, since a
        definition by name hides every glob.
        """
        if key in self._step_keys:
            return None
        definition = self._effective(key)
        if definition is None:
            return {"step_metric": self._axis, "step_sync": False}
        if definition.step_metric:
            return None
        by_name = key in self._names  # its step_sync is the user's; a glob's is not carried
        step_sync = definition.step_sync and by_name
        return _options(replace(definition, step_metric=self._axis, step_sync=step_sync))

    def _redeclaration(self, key: str) -> Declaration:
        """Declare ``key`` again, whole (``overwrite``), after a user definition changed what
        applies to it: what stepsync declared before may hold a glob's options or the axis."""
        self._declared.discard(key)
        options = self._axis_options(key)
        if options is None:  # no stepsync axis any more: exactly the user's definitions
            options = _options(self._effective(key) or Definition())
        else:
            self._declared.add(key)
        return key, {**options, "overwrite": True}


def _options(definition: Definition) -> dict[str, Any]:
    """``define_metric`` keyword arguments for ``definition``."""
    options: dict[str, Any] = {
        "step_metric": definition.step_metric,
        "step_sync": definition.step_sync,
    }
    if definition.hidden:
        options["hidden"] = True
    if definition.summary:
        options["summary"] = ",".join(sorted(definition.summary))
    return options


#: A leaf of a row: a top-level key, or the path of a nested one (``("train", "loss")``).
Leaf = str | tuple[str, ...]


def leaves(row: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[Leaf, Any]]:
    """Every leaf of a row; a dict with a ``_type`` (media, a histogram, as wandb encodes them)
    is one leaf."""
    for key, value in row.items():
        path = (*prefix, key)
        if type(value) is dict and "_type" not in value:
            yield from leaves(value, path)
        else:
            yield (path if prefix else key), value


def dotted(leaf: Leaf) -> str:
    """The name wandb charts a leaf under (nested keys joined by ".")."""
    return leaf if isinstance(leaf, str) else ".".join(leaf)


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    return type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0
