"""One lazy, named registry for every pluggable kind of thing (passes, backends).

After xDSL's `transforms/__init__.py`: names map to classes; built-in modules are imported on the
first lookup, plugins' entry points only when a name is not found among the built-ins (or when the
whole list is asked for), so `lepton-opt --passes canonicalize` never imports a plugin it does not
use. Registering a second class under a taken name is an error naming both origins.

`lepton_passes` keeps one `Registry` of `Pass` classes (entry-point group `lepton.passes`) and
`lepton_backends` one of `Backend` classes (`lepton.backends`); adding a new kind of pluggable
thing is one more `Registry(...)`, not a copy of this module.
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Callable, Generic, Iterable, TypeVar

from .errors import LeptonError

T = TypeVar("T", bound=type)

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close to `word`, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """Classes by kebab-case name, with lazy built-ins and entry-point plugins.

    `kind` names the thing in messages ("pass", "backend"); `base` is the class every entry must
    subclass; `group` is the entry-point group; `builtin_modules` are imported on first access;
    `error` is the LeptonError subclass raised; `check` may reject a class (return a reason).
    """

    def __init__(self, kind: str, base: type, group: str, builtin_modules: Iterable[str], *,
                 error: type[LeptonError] = LeptonError, check: Callable[[type], str | None] | None = None,
                 plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.base = base
        self.group = group
        self.builtin_modules = list(builtin_modules)
        self.error = error
        self.check = check
        self._classes: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._builtins_loaded = False
        self._plugins_loaded = False

    # -- registering -------------------------------------------------------------------------------
    def register(self, cls: T, *, origin: str | None = None) -> T:
        """Register `cls` under `cls.name`; duplicate names are an error naming both origins."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise self.error(f"{cls!r} is not a subclass of {self.base.__module__}.{self.base.__qualname__}")
        name = getattr(cls, "name", "")
        if not name or not _NAME_RE.match(name):
            raise self.error(f"{self.kind} {cls.__name__} needs a kebab-case `name`, got {name!r}")
        if self.check is not None:
            why = self.check(cls)
            if why:
                raise self.error(why)
        where = origin or f"{cls.__module__}.{cls.__qualname__}"
        if name in self._classes and self._classes[name] is not cls:
            raise self.error(f"duplicate {self.kind} name {name!r}: registered by {self._origins[name]} and by {where}")
        self._classes[name] = cls
        self._origins[name] = where
        return cls

    def decorator(self, cls: T | None = None, *, origin: str | None = None):
        """`@registry.decorator` or `@registry.decorator(origin=...)`."""
        if cls is not None:
            return self.register(cls, origin=origin)
        return lambda c: self.register(c, origin=origin)

    # -- loading -----------------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        for mod in self.builtin_modules:
            importlib.import_module(mod)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not hide the others; say which one
                raise self.error(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
            if isinstance(obj, type) and issubclass(obj, self.base):
                if self._classes.get(getattr(obj, "name", "")) is obj:
                    continue
                self.register(obj, origin=f"entry point {ep.name} ({ep.value})")  # type: ignore[arg-type]
            elif callable(obj):
                obj()  # a function that registers one or more entries itself

    # -- lookups -----------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The class registered as `name`; an error listing the known names otherwise."""
        self._load_builtins()
        if name not in self._classes:
            self._load_plugins()
        try:
            return self._classes[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}{did_you_mean(name, self._classes)}; "
                             f"known {self.plural}: {', '.join(sorted(self._classes))}") from None

    def all(self) -> dict[str, T]:
        """Every registered class (built-in and plugins), sorted by name."""
        self._load_builtins()
        self._load_plugins()
        return dict(sorted(self._classes.items()))

    def origin(self, name: str) -> str:
        return self._origins.get(name, "?")

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._classes
