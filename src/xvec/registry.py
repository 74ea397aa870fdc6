"""Discovery of models and losses through the entry-point groups ``xvec.models``/``xvec.losses``.

xvec's own models and losses are declared in its pyproject exactly as a third-party package
declares its own, so there is one mechanism for both. Entry points are listed without importing
anything; a class is imported only when it is asked for by name.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from xvec.errors import XvecError

GROUPS = {"model": "xvec.models", "loss": "xvec.losses"}


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others still work."""


@dataclass(frozen=True)
class Entry:
    """One registered model or loss: its name, where it comes from, and how to load it."""

    kind: str
    name: str
    distribution: str
    version: str
    entry_point: EntryPoint

    def load(self) -> type:
        """Import and return the class; a broken plugin raises an XvecError naming it."""
        try:
            return self.entry_point.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # any import failure of third-party code, sys.exit too
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise XvecError(
                f"{self.kind} '{self.name}' from package '{self.distribution}' failed to load: "
                f"{type(exc).__name__}{': ' + detail if detail else ''}"
            ) from exc


@cache
def entries(kind: str) -> dict[str, Entry]:
    """All registered entries of a kind ("model" or "loss"), by name.

    Two distributions that register the same name are an error naming both.
    """
    found: dict[str, Entry] = {}
    for ep in entry_points(group=GROUPS[kind]):
        dist = ep.dist
        entry = Entry(
            kind=kind,
            name=ep.name,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
            entry_point=ep,
        )
        previous = found.get(ep.name)
        if previous is not None and previous.distribution != entry.distribution:
            raise XvecError(
                f"{kind} name '{ep.name}' is registered by two packages: "
                f"'{previous.distribution}' ({previous.entry_point.value}) and "
                f"'{entry.distribution}' ({ep.value}); uninstall one of them"
            )
        found[ep.name] = entry
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def refresh() -> None:
    """Forget cached discovery results (after installing or removing a plugin in-process)."""
    entries.cache_clear()


def get_entry(kind: str, name: str) -> Entry:
    """The entry for ``name``; unknown names list what is available and the closest match."""
    available = entries(kind)
    if name in available:
        return available[name]
    lowered = {key.lower(): key for key in available}
    if name.lower() in lowered:
        return available[lowered[name.lower()]]
    close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    names = ", ".join(available) or "none installed"
    raise XvecError(f"unknown {kind} '{name}'. Available: {names}.{hint}")


def get_class(kind: str, name: str) -> type:
    """Import and return the class registered as ``name``."""
    return get_entry(kind, name).load()


def loadable(kind: str) -> dict[str, tuple[Entry, type]]:
    """All entries whose class imports; each broken plugin becomes a warning naming it."""
    result: dict[str, tuple[Entry, type]] = {}
    for name, entry in entries(kind).items():
        try:
            result[name] = (entry, entry.load())
        except XvecError as exc:
            warnings.warn(str(exc), PluginWarning, stacklevel=2)
    return result


def _type_name(annotation: Any) -> str:
    """A readable type: ``Literal`` shows its allowed values (``'SAP' | 'ASP'``)."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    name = getattr(annotation, "__name__", None) or str(annotation)
    return name.replace("typing.", "")


def describe(cls: type) -> tuple[str, list[tuple[str, str, Any]]]:
    """A class's one-line description and its parameters as (name, type, default)."""
    doc = (cls.__doc__ or "").strip().splitlines()
    summary = doc[0] if doc else ""
    params = []
    schema = getattr(cls, "Params", None)
    if schema is not None:
        for field_name, field in schema.model_fields.items():
            type_name = _type_name(field.annotation)
            default = field.get_default(call_default_factory=True)
            params.append((field_name, type_name, default))
    return summary, params


def build(kind: str, name: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Instantiate a registered model or loss from a name and a parameter dict.

    The parameters are validated against the class's ``Params`` schema; errors name the field.
    """
    cls = get_class(kind, name)
    validated = validate_params(kind, name, cls, params or {})
    return cls(validated, **kwargs)


def validate_params(kind: str, name: str, cls: type, params: dict[str, Any]) -> Any:
    """Validate ``params`` against ``cls.Params``; raise an XvecError naming the bad field."""
    from pydantic import ValidationError

    try:
        return cls.Params(**params)
    except ValidationError as exc:
        allowed = ", ".join(cls.Params.model_fields)
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise XvecError(
            f"{kind} '{name}' parameter '{loc}': {first['msg']} (allowed parameters: {allowed})"
        ) from exc
