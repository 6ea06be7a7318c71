"""Recipes: TOML files that name components and their params, validated once, here.

A recipe is read with ``tomllib``, merged with the recipe it ``extends``, patched by
``--set a.b.c=VALUE`` overrides, then validated in two phases:

1. structure: the fixed sections (``extra="forbid"``), where a component is just
   ``{name = "...", ...params}`` (or the bare string ``"name"``);
2. components: each component's params against its registered ``Params`` model, so
   user plugins validate exactly like built-ins.

Every problem is reported with its path (``model.refiner(gldm.v1).memory_dim: ...``)
and, for unknown keys, the allowed ones. See docs/concepts.md.
"""

from __future__ import annotations

import copy
import difflib
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from t2i import registry

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class RecipeError(ValueError):
    """A recipe that cannot be read or validated; ``problems`` lists every issue found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}:\n" + "\n".join(f"  - {p}" for p in problems))


# -- components ------------------------------------------------------------------
class Component(BaseModel):
    """A reference to a registered component plus its raw params (validated in phase 2)."""

    model_config = ConfigDict(extra="allow")

    name: str
    _entry: registry.Entry | None = PrivateAttr(default=None)
    _params: BaseModel | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def raw_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def entry(self) -> registry.Entry:
        if self._entry is None:
            raise RuntimeError(f"component {self.name!r} has not been resolved; call Recipe.resolve()")
        return self._entry

    @property
    def params(self) -> Any:
        if self._params is None:
            raise RuntimeError(f"component {self.name!r} has not been resolved; call Recipe.resolve()")
        return self._params

    def build(self, **runtime: Any) -> Any:
        return self.entry.factory(self.params, **runtime)

    def resolved_dict(self) -> dict[str, Any]:
        return {"name": self.entry.name, **self.params.model_dump(mode="json")}


def component(kind: str, default: Any = ..., **kwargs: Any) -> Any:
    """A recipe field that holds a component of ``kind``."""
    extra = {"component_kind": kind}
    if default is ... and "default_factory" not in kwargs:
        return Field(json_schema_extra=extra, **kwargs)
    if isinstance(default, str):
        return Field(default_factory=lambda: Component(name=default), json_schema_extra=extra, **kwargs)
    return Field(default=default, json_schema_extra=extra, **kwargs)


def components_list(kind: str, names: list[str] | None = None, **kwargs: Any) -> Any:
    extra = {"component_kind": kind}
    names = list(names or [])
    return Field(default_factory=lambda: [Component(name=n) for n in names], json_schema_extra=extra, **kwargs)


class Section(BaseModel):
    # inf and nan parse as TOML floats; a learning rate, weight or beta of inf/nan only makes a run diverge later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# -- sections ----------------------------------------------------------------------
class PluginsSection(Section):
    imports: list[str] = Field(default_factory=list, description="modules to import before validation")


class DataSection(Section):
    dataset: Component = component("dataset", "shapes", description="registered dataset and its params")
    batch_size: int = Field(10, ge=1)
    workers: int = Field(0, ge=0, description="DataLoader worker processes")


class ModelSection(Section):
    stages: int = Field(3, ge=1, description="number of generator stages (BRANCH_NUM)")
    base_size: int = Field(64, ge=4, description="first-stage resolution; stage i is base_size * 2**i")
    z_dim: int = Field(100, ge=1)
    cond_dim: int = Field(100, ge=1, description="conditioning-augmentation size (CONDITION_DIM)")
    text_dim: int = Field(256, ge=2, description="word/sentence feature size (EMBEDDING_DIM)")
    gf_dim: int = Field(64, ge=1, description="generator width (GF_DIM)")
    df_dim: int = Field(32, ge=1, description="discriminator width (DF_DIM)")
    text_encoder: Component = component("text_encoder", "rnn")
    image_encoder: Component | None = component("image_encoder", None)
    captioner: Component | None = component("captioner", None)
    generator: Component = component("generator", "stacked")
    refiner: Component = component("refiner", "dm")
    discriminator: Component = component("discriminator", "sn")


class EmaSection(Section):
    decay: float = Field(0.999, gt=0, lt=1, description="per-step EMA decay (originals: 0.999)")
    half_life_steps: float | None = Field(None, gt=0, description="if set, overrides decay: 0.5 ** (1 / half_life)")
    include_buffers: bool = Field(False, description="also average BatchNorm buffers (originals: no)")


class EncoderCheckpoints(Section):
    text_encoder: str | None = Field(None, description="pretrained text-encoder checkpoint (t2i pretrain damsm)")
    image_encoder: str | None = Field(None, description="pretrained DAMSM image encoder (t2i pretrain damsm)")
    captioner: str | None = Field(None, description="pretrained STREAM captioner (t2i pretrain stream)")
    inception_weights: str | None = Field(None, description="ImageNet Inception-v3 weights for the DAMSM image encoder")


class TrainSection(Section):
    steps: int = Field(1000, ge=1, description="generator steps to train")
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    kl_weight: float = Field(1.0, ge=0)
    adversarial: Component = component("adversarial_loss", "cond_uncond")
    alignment: list[Component] = components_list("alignment_loss", description="alignment terms, each with a weight")
    ema: EmaSection = Field(default_factory=EmaSection)
    pretrained: EncoderCheckpoints = Field(default_factory=EncoderCheckpoints)
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=0, description="periodic checkpoints kept besides last and best")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop",
        description='a NaN/Inf loss or network: "stop" (exit 1, naming it) or "skip" the batch / go back to the '
        "last good checkpoint",
    )
    finite_check_every: int = Field(
        50, ge=1, description="steps between NaN/Inf checks of the networks (always done before a checkpoint)"
    )
    deterministic: bool = False
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    recompute: list[str] = Field(
        [],
        description='recomputed in backward to save memory (same values): "discriminators" during the G update, '
        '"generator.<submodule path>"; [] (default) keeps every activation',
    )

    @field_validator("recompute")
    @classmethod
    def _recompute_targets(cls, value: list[str]) -> list[str]:
        for item in value:
            if item != "discriminators" and not (item.startswith("generator.") and len(item) > len("generator.")):
                raise ValueError(f'{item!r}: use "discriminators" or "generator.<submodule path>" (e.g. '
                                 '"generator.init_stage")')  # fmt: skip
        return value


class DamsmPretrainSection(Section):
    epochs: int = Field(600, ge=1)
    batch_size: int = Field(48, ge=2)
    image_size: int = Field(299, ge=32)
    lr: float = Field(2e-3, gt=0)
    lr_decay: float = Field(0.98, gt=0, le=1)
    lr_floor: float = Field(2e-4, gt=0)
    grad_clip: float = Field(0.25, gt=0)
    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0
    snapshot_every: int = Field(50, ge=1, description="epochs between checkpoints")


class StreamPretrainSection(Section):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    snapshot_every: int = Field(1, ge=1, description="epochs between checkpoints")


class PretrainSection(Section):
    damsm: DamsmPretrainSection = Field(default_factory=DamsmPretrainSection)
    stream: StreamPretrainSection = Field(default_factory=StreamPretrainSection)


class EvalSection(Section):
    metrics: list[Component] = components_list("metric")
    n_samples: int = Field(30000, ge=1)
    batch_size: int = Field(10, ge=1)
    split: str = Field("test", description="the split `t2i eval` reports on")
    every_steps: int | None = Field(None, ge=1, description="evaluate during training every N steps")
    best_metric: str | None = Field(None, description="metric whose best value keeps a 'best' checkpoint")
    selection_split: Literal["val", "test"] = Field(
        "val",
        description="what in-training evaluation and the best checkpoint use: 'val' (items carved from the training "
        "split, never trained on) or 'test' (the originals' way: chosen on the split that is reported)",
    )
    val_size: int | None = Field(
        None, ge=1, description="training items set aside as 'val' (default 5% of them, at most 1000)"
    )
    val_seed: int = Field(0, description="which training items go to 'val' (a seeded hash of their keys)")


class RuntimeSection(Section):
    """Where and how the networks run; t2i/runtime.py applies it (docs/performance.md)."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast format; fp32 = originals' math")
    channels_last: bool = Field(False, description="channels-last memory format for networks and images")
    compile: bool = Field(False, description="torch.compile the generator and the discriminators")


class LogSection(Section):
    """Extra copies of what a run logs; metrics.jsonl and the run folder's files are always written."""

    tensorboard: bool = Field(
        False, description="also write TensorBoard event files to RUN/tensorboard/ (pip install 't2i[tensorboard]')"
    )


class Recipe(Section):
    """A whole experiment: data, model, training, evaluation."""

    name: str = ""
    description: str = ""
    seed: int = 100
    plugins: PluginsSection = Field(default_factory=PluginsSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    log: LogSection = Field(default_factory=LogSection)

    _source: str = PrivateAttr(default="<recipe>")
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    _overrides: list[str] = PrivateAttr(default_factory=list)

    # phase 2 --------------------------------------------------------------------
    def components(self) -> Iterator[tuple[str, str, Component]]:
        """Yield ``(path, kind, component)`` for every component in the recipe."""
        yield from _walk_components(self, "")

    def resolve(self) -> Recipe:
        """Validate every component against its registered Params (phase 2)."""
        problems: list[str] = []
        for path, kind, comp in self.components():
            reg = registry.get_registry(kind)
            try:
                entry = reg.get(comp.name)
            except registry.ComponentError as exc:
                problems.append(f"{path}.name: {exc}")
                continue
            try:
                comp._params = entry.validate(comp.raw_params)
                comp._entry = entry
            except ValidationError as exc:
                problems.extend(_explain(exc, f"{path}({entry.name})", entry.params))
        if problems:
            raise RecipeError(self._source, problems)
        return self

    def to_dict(self, resolved: bool = True) -> dict[str, Any]:
        """A plain dict (TOML-ready); with ``resolved`` every component shows all its params."""
        data = self.model_dump(mode="json", exclude_none=True)
        if resolved:
            for path, _kind, comp in self.components():
                _set_path(data, path, comp.resolved_dict())
        return _drop_none(data)

    def to_toml(self, resolved: bool = True) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict(resolved))

    @property
    def source(self) -> str:
        return self._source

    @property
    def raw(self) -> dict[str, Any]:
        return copy.deepcopy(self._raw)

    @property
    def overrides(self) -> list[str]:
        return list(self._overrides)

    def stage_sizes(self) -> list[int]:
        return [self.model.base_size * 2**i for i in range(self.model.stages)]


def _drop_none(value: Any) -> Any:
    """TOML has no null: unset optional values are left out (they read back as their defaults)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _walk_components(model: BaseModel, prefix: str) -> Iterator[tuple[str, str, Component]]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}.{name}" if prefix else name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kind = extra.get("component_kind")
        if kind and isinstance(value, Component):
            yield path, kind, value
        elif kind and isinstance(value, list):
            for i, item in enumerate(value):
                yield f"{path}[{i}]", kind, item
        elif isinstance(value, BaseModel) and not isinstance(value, Component):
            yield from _walk_components(value, path)


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = data
    for part in parts[:-1]:
        node = node[part]
    last = parts[-1]
    if last.endswith("]"):
        key, index = last[:-1].split("[")
        node[key][int(index)] = value
    else:
        node[last] = value


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing allowed keys)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _explain(error: ValidationError, prefix: str, root: type[BaseModel]) -> list[str]:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        path = f"{prefix}.{where}" if prefix and where else (prefix or where)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            owner = _model_at(root, loc[:-1])
            allowed = sorted(owner.model_fields) if owner is not None else []
            if owner is Component or (owner is not None and issubclass(owner, Component)):
                allowed = []
            message = f"unknown key {loc[-1]!r}"
            if allowed:
                close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
                if close:
                    message += f" (did you mean {close[0]!r}?)"
                message += f"; allowed keys: {', '.join(allowed)}"
        elif item["type"] == "literal_error":
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"{path}: {message}")
    return lines


# -- reading, extends, overrides --------------------------------------------------------
def find_recipe(path: str | Path, relative_to: Path | None = None) -> Path:
    """Find a recipe file: as given, relative to ``relative_to``, or in the built-in recipes/."""
    candidate = Path(path).expanduser()
    options = [candidate]
    if relative_to is not None and not candidate.is_absolute():
        options.insert(0, relative_to / candidate)
    if not candidate.is_absolute():
        options.append(RECIPES_DIR / candidate)
        if candidate.suffix != ".toml":
            options.append(RECIPES_DIR / f"{candidate}.toml")
    for option in options:
        if option.is_file():
            return option.resolve()
    builtin = sorted(p.stem for p in RECIPES_DIR.glob("*.toml")) if RECIPES_DIR.is_dir() else []
    hint = f" Built-in recipes: {', '.join(builtin)}." if builtin else ""
    raise RecipeError(str(path), [f"recipe file not found (looked in: {', '.join(str(o) for o in options)}).{hint}"])


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read: {exc}"]) from None


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge ``patch`` into a copy of ``base``; a component whose name changes is replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            renamed = "name" in value and "name" in old and value["name"] != old["name"]
            merged[key] = copy.deepcopy(value) if renamed else deep_merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and everything it ``extends``, merged, as a plain dict."""
    file = find_recipe(path, _seen[-1].parent if _seen else None)
    if file in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, file))
        raise RecipeError(str(file), [f"extends: cycle {chain}"])
    data = read_toml(file)
    if not data:  # most likely the wrong file, or one not written yet: all defaults would hide that
        raise RecipeError(
            str(file), ['empty recipe: the file sets nothing; give its settings, or `extends = "dmgan_shapes"`']
        )
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(str(file), [f"extends: expected a file name, got {parent!r}"])
    base = load_raw(parent, (*_seen, file))
    base.pop("name", None)
    return deep_merge(base, data)


def parse_value(raw: str) -> Any:
    """Parse an override value with TOML's value grammar, falling back to a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=VALUE`` overrides to a raw recipe dict (new dict)."""
    result = copy.deepcopy(data)
    problems = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {override!r}: expected KEY=VALUE, e.g. model.gf_dim=32")
            continue
        parts = key.split(".")
        node = result
        try:
            for part in parts[:-1]:
                child = node.get(part)
                if isinstance(child, str) and part not in ("name",):
                    child = {"name": child}  # component shorthand -> table
                if child is None:
                    child = {}
                if not isinstance(child, dict):
                    raise TypeError(f"{part!r} is a value, not a table")
                node[part] = child
                node = child
        except TypeError as exc:
            problems.append(f"--set {key}: {exc}")
            continue
        node[parts[-1]] = parse_value(raw.strip())
    if problems:
        raise RecipeError("overrides", problems)
    return result


def validate(
    data: dict[str, Any],
    source: str = "<recipe>",
    overrides: list[str] | None = None,
    *,
    import_plugins: bool = False,
) -> Recipe:
    """Phase 1 (structure) and phase 2 (component params) on a raw dict.

    ``import_plugins`` imports the recipe's ``[plugins] imports`` first. Only a recipe file the user names runs
    code that way; a recipe stored in a checkpoint or a run folder travels with downloaded files, so it is
    validated against what is already registered (``--code``, entry points) and never imports anything.
    """
    data = dict(data)
    data.pop("extends", None)
    if import_plugins:
        _import_plugins(data, source)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, _explain(exc, "", Recipe)) from None
    recipe._source = source
    recipe._raw = copy.deepcopy(data)
    recipe._overrides = list(overrides or [])
    try:
        return recipe.resolve()
    except RecipeError as exc:
        # Named only when their components are missing and they were not imported some other way.
        modules = [] if import_plugins else [m for m in _plugin_modules(data) if m not in sys.modules]
        if modules and any(".name: unknown " in p for p in exc.problems):
            exc.problems.append(
                f"plugins.imports lists {', '.join(map(repr, modules))}, which t2i does not import from a stored "
                "recipe (a checkpoint or run folder must not run code): pass --code FILE.py with the module's file, "
                "or install the package that provides the 't2i.plugins' entry point"
            )
        raise


def _plugin_modules(data: dict[str, Any]) -> list[str]:
    plugins = data.get("plugins", {})
    imports = plugins.get("imports", []) if isinstance(plugins, dict) else []
    return [str(m) for m in imports] if isinstance(imports, list) else []


def _import_plugins(data: dict[str, Any], source: str) -> None:
    problems = []
    for module in _plugin_modules(data):
        try:
            registry.import_user_module(module)
        except registry.ComponentError as exc:
            problems.append(f"plugins.imports: {exc}")
    if problems:
        raise RecipeError(source, problems)


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge ``extends``, apply ``--set`` overrides and validate a recipe file."""
    file = find_recipe(path)
    data = load_raw(file)
    data.setdefault("name", file.stem)
    overrides = list(overrides or [])
    data = apply_overrides(data, overrides)
    return validate(data, str(file), overrides, import_plugins=True)


def builtin_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.toml")) if RECIPES_DIR.is_dir() else []
