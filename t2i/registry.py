"""Component registries: one per kind, each mapping versioned names to factories.

This is a leaf module: it imports nothing from t2i, so user code and every other
module can depend on it without cycles. The design follows spaCy's catalogue / confection
registries: versioned names, typed params validated once, errors that list what exists.

A registered entry holds a factory (usually an ``nn.Module`` class or a function),
a pydantic ``Params`` model with defaults, a one-line description and where it was
defined. Names are versioned (``gldm.v1``); the bare name ``gldm`` resolves to the
newest version. Built-in components are imported lazily, on the first lookup of
their kind, and installed plugins (entry-point group ``t2i.plugins``) at the same
moment; a plugin that fails to import is reported by name and the others load.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

__all__ = [
    "KINDS",
    "ComponentError",
    "DuplicateComponentError",
    "Entry",
    "Params",
    "Registry",
    "UnknownComponentError",
    "UnknownKindError",
    "get_registry",
    "import_user_file",
    "import_user_module",
    "load_entry_point_plugins",
    "plugin_errors",
    "register",
    "registries",
]

_NAME_RE = re.compile(r"^(?P<base>[a-z][a-z0-9_\-]*(?:\.[a-z][a-z0-9_\-]*)*?)(?:\.v(?P<version>\d+))?$")

REGISTER_HINT = (
    "Register your own with @t2i.register({kind!r}, 'myname.v1', params=MyParams) "
    "and load it with --code FILE.py, [plugins] imports = ['my_module'] in the recipe, "
    "or the 't2i.plugins' entry-point group of an installed package."
)


class Params(BaseModel):
    """Base class for component parameters: strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/nan weights only diverge


class ComponentError(LookupError):
    """Base class of the registry's user-facing errors."""


class UnknownComponentError(ComponentError):
    pass


class UnknownKindError(ComponentError):
    pass


class DuplicateComponentError(ComponentError):
    pass


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str  # versioned, e.g. "gldm.v1"
    factory: Callable[..., Any]
    params: type[BaseModel]
    description: str
    module: str
    qualname: str

    @property
    def base(self) -> str:
        return split_name(self.name)[0]

    @property
    def version(self) -> int:
        return split_name(self.name)[1]

    @property
    def defined_at(self) -> str:
        return f"{self.module}:{self.qualname}"

    def validate(self, params: dict[str, Any] | BaseModel | None = None) -> BaseModel:
        """Validate raw params against this component's ``Params`` model."""
        if isinstance(params, self.params):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        return self.params.model_validate(params or {})

    def build(self, params: dict[str, Any] | BaseModel | None = None, /, **runtime: Any) -> Any:
        """Validate ``params`` and call the factory as ``factory(params, **runtime)``."""
        return self.factory(self.validate(params), **runtime)


def split_name(name: str) -> tuple[str, int]:
    """``"gldm.v2"`` -> ``("gldm", 2)``; a bare name gets version 0 (meaning: newest)."""
    match = _NAME_RE.match(name)
    if not match:
        raise ComponentError(
            f"invalid component name {name!r}: use lower-case letters, digits, '_', '-' and dots, "
            "optionally ending in a version such as '.v1'"
        )
    version = match.group("version")
    return match.group("base"), int(version) if version else 0


def _params_from_signature(factory: Callable[..., Any], name: str) -> type[BaseModel]:
    """Build a Params model from keyword parameters with defaults (functions only)."""
    fields: dict[str, Any] = {}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not inspect.isclass(factory):
        for parameter in signature.parameters.values():
            if parameter.kind is not parameter.KEYWORD_ONLY or parameter.default is parameter.empty:
                continue
            annotation = parameter.annotation if parameter.annotation is not parameter.empty else Any
            fields[parameter.name] = (annotation, parameter.default)
    model_name = "".join(part.capitalize() for part in re.split(r"[._\-]", name)) + "Params"
    return create_model(model_name, __base__=Params, **fields)


@dataclass
class Registry:
    """Named components of one kind."""

    kind: str
    description: str
    builtins: tuple[str, ...] = ()
    _entries: dict[str, Entry] = field(default_factory=dict)
    _discovered: bool = False

    # -- registration -----------------------------------------------------
    def register(
        self,
        name: str,
        factory: Callable[..., Any] | None = None,
        *,
        params: type[BaseModel] | None = None,
        description: str | None = None,
        override: bool = False,
    ) -> Any:
        """Register ``factory`` under ``name``; usable as a decorator or a call."""

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            base, version = split_name(name)
            full = f"{base}.v{version or 1}"
            params_model = params if params is not None else _params_from_signature(obj, full)
            if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
                raise ComponentError(f"{self.kind} {full!r}: params must be a pydantic BaseModel subclass")
            doc = description or (inspect.getdoc(obj) or "").strip().splitlines()[:1]
            entry = Entry(
                kind=self.kind,
                name=full,
                factory=obj,
                params=params_model,
                description=doc if isinstance(doc, str) else (doc[0] if doc else ""),
                module=getattr(obj, "__module__", "?"),
                qualname=getattr(obj, "__qualname__", repr(obj)),
            )
            old = self._entries.get(full)
            if old is not None and not override and not _same_object(old, entry):
                raise DuplicateComponentError(
                    f"{self.kind} {full!r} is already registered by {old.defined_at}; "
                    f"{entry.defined_at} tries to register a different object under that name. "
                    "Choose a new name or version, or pass override=True."
                )
            self._entries[full] = entry
            return obj

        return add(factory) if factory is not None else add

    # -- lookup -------------------------------------------------------------
    def discover(self) -> None:
        """Import built-in modules and installed plugins, once."""
        if self._discovered:
            return
        self._discovered = True
        for module in self.builtins:
            # Kinds list their modules up front; a module that is not written yet is skipped.
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
        load_entry_point_plugins()

    def resolve(self, name: str) -> str:
        """Map a bare or versioned name to the full registered name."""
        self.discover()
        base, version = split_name(name)
        if version:
            full = f"{base}.v{version}"
            if full in self._entries:
                return full
        else:
            versions = [e.version for e in self._entries.values() if e.base == base]
            if versions:
                return f"{base}.v{max(versions)}"
        raise UnknownComponentError(self._unknown_message(name))

    def get(self, name: str) -> Entry:
        return self._entries[self.resolve(name)]

    def build(self, name: str, params: dict[str, Any] | BaseModel | None = None, /, **runtime: Any) -> Any:
        return self.get(name).build(params, **runtime)

    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        return sorted(
            n for n in self._entries if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.rsplit(".v", 1)[0], pattern)
        )

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ComponentError:
            return False
        return True

    def _unknown_message(self, name: str) -> str:
        available = sorted(self._entries)
        bases = sorted({e.base for e in self._entries.values()})
        close = difflib.get_close_matches(split_name(name)[0], bases, n=3, cutoff=0.6)
        lines = [f"unknown {self.kind} {name!r}."]
        lines.append("Available: " + (", ".join(available) if available else "(none registered)") + ".")
        if close:
            lines.append("Did you mean " + " or ".join(repr(c) for c in close) + "?")
        lines.append(REGISTER_HINT.format(kind=self.kind))
        return " ".join(lines)

    @contextmanager
    def snapshot(self) -> Iterator[Registry]:
        """Restore this registry's entries on exit (for tests and notebooks)."""
        self.discover()
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)


def _same_object(a: Entry, b: Entry) -> bool:
    # Re-running a notebook cell or re-importing a --code file creates a new object
    # with the same module and qualname: treat that as the same registration.
    return a.factory is b.factory or (a.module == b.module and a.qualname == b.qualname and a.module != "?")


# -- the kinds -------------------------------------------------------------------
_KIND_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "text_encoder": (
        "Caption encoders: token ids -> word features and a sentence embedding",
        ("t2i.encoders.text_rnn",),
    ),
    "image_encoder": ("Image encoders for alignment losses and metrics", ("t2i.encoders.damsm_image",)),
    "captioner": ("Image captioners for re-description losses (STREAM)", ("t2i.encoders.stream_captioner",)),
    "refiner": (
        "Stage refiners: image features + words -> the residual input of a refinement stage",
        ("t2i.refiners.attention", "t2i.refiners.glam", "t2i.refiners.dynamic_memory", "t2i.refiners.gldm"),
    ),
    "generator": ("Multi-stage generators", ("t2i.models.generator",)),
    "discriminator": ("Per-scale discriminators", ("t2i.models.discriminator",)),
    "alignment_loss": (
        "Text-image alignment loss terms added to the generator loss",
        ("t2i.losses.damsm", "t2i.losses.stream"),
    ),
    "adversarial_loss": ("Adversarial (GAN) loss formulations", ("t2i.losses.adversarial",)),
    "dataset": ("Text-image datasets", ("t2i.data.cub", "t2i.data.coco", "t2i.data.folder", "t2i.data.shapes")),
    "metric": ("Evaluation metrics, each a versioned protocol", ("t2i.metrics",)),
}


def _make_registries() -> dict[str, Registry]:
    return {kind: Registry(kind, desc, mods) for kind, (desc, mods) in _KIND_SPECS.items()}


registries: dict[str, Registry] = _make_registries()
KINDS: tuple[str, ...] = tuple(registries)


def get_registry(kind: str) -> Registry:
    try:
        return registries[kind]
    except KeyError:
        close = difflib.get_close_matches(kind, KINDS, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise UnknownKindError(f"unknown component kind {kind!r}. Kinds: {', '.join(KINDS)}.{hint}") from None


def register(
    kind: str,
    name: str,
    factory: Callable[..., Any] | None = None,
    *,
    params: type[BaseModel] | None = None,
    description: str | None = None,
    override: bool = False,
) -> Any:
    """Register a component: ``@register("refiner", "myrefiner.v1", params=MyParams)``."""
    return get_registry(kind).register(name, factory, params=params, description=description, override=override)


# -- plugins ---------------------------------------------------------------------
ENTRY_POINT_GROUP = "t2i.plugins"
_plugin_errors: dict[str, str] = {}
_entry_points_loaded = False


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to import: name -> one-line reason."""
    return dict(_plugin_errors)


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def load_entry_point_plugins() -> None:
    """Import every installed package that declares the ``t2i.plugins`` entry-point group."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if callable(loaded) and not inspect.ismodule(loaded):
                loaded()
        except Exception as exc:  # one broken plugin must not break the others
            _plugin_errors[f"entry point {ep.name} ({ep.value})"] = _describe(exc)


class PluginImportError(ComponentError):
    pass


def import_user_module(module: str) -> None:
    """Import a module by dotted path (recipe ``[plugins] imports``)."""
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise PluginImportError(f"plugin module {module!r} failed to import: {_describe(exc)}") from exc


def import_user_file(path: str | Any) -> None:
    """Import a Python file so that its registrations run (``--code FILE``)."""
    from pathlib import Path

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise PluginImportError(f"--code file not found: {file}")
    module_name = "t2i_user_code." + re.sub(r"\W", "_", file.stem)
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PluginImportError(f"--code file {file} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginImportError(f"--code file {file} failed to import: {_describe(exc)}") from exc


def format_validation_error(prefix: str, error: ValidationError) -> list[str]:
    """Flatten a pydantic error into ``prefix.loc: message`` lines."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        lines.append(f"{path}: {item['msg']}")
    return lines
