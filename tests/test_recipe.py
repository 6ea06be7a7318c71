from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import Field

import t2i
from t2i import recipe as recipe_mod
from t2i.recipe import RecipeError
from t2i.registry import Params, get_registry


class MemParams(Params):
    memory_dim: int = 128
    mask: str = "per_sample"


@pytest.fixture
def write(tmp_path: Path):
    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def test_defaults_validate_and_fill_params():
    recipe = recipe_mod.validate({"name": "x"})
    assert recipe.model.refiner.entry.name.startswith("dm.v")
    resolved = recipe.to_dict()
    assert resolved["model"]["refiner"]["name"] == recipe.model.refiner.entry.name
    assert "mask" in resolved["model"]["refiner"]


def test_component_inline_table_and_string_shorthand(write):
    t2i.register("refiner", "memtest.v1", lambda p, **k: None, params=MemParams)
    path = write(
        "r.toml",
        """
        [model]
        refiner = { name = "memtest", memory_dim = 64 }
        [model.discriminator]
        name = "bn"
    """,
    )
    recipe = recipe_mod.load(path)
    assert recipe.model.refiner.params.memory_dim == 64
    assert recipe.model.refiner.entry.name == "memtest.v1"
    assert recipe.model.discriminator.entry.name.startswith("bn.v")
    assert recipe.name == "r"


def test_component_param_error_is_path_qualified(write):
    t2i.register("refiner", "memtest.v1", lambda p, **k: None, params=MemParams)
    path = write(
        "r.toml",
        """
        [model]
        refiner = { name = "memtest", memory_dim = "big" }
    """,
    )
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    assert "model.refiner(memtest.v1).memory_dim: Input should be a valid integer" in info.value.problems[0]


def test_unknown_component_param_lists_allowed(write):
    t2i.register("refiner", "memtest.v1", lambda p, **k: None, params=MemParams)
    path = write(
        "r.toml",
        """
        [model]
        refiner = { name = "memtest", memory_dm = 3 }
    """,
    )
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    problem = info.value.problems[0]
    assert "model.refiner(memtest.v1).memory_dm" in problem
    assert "did you mean 'memory_dim'" in problem and "allowed keys: mask, memory_dim" in problem


def test_unknown_section_and_misspelt_key(write):
    path = write(
        "r.toml",
        """
        [modle]
        gf_dim = 3
        [train]
        lr_gg = 1.0
    """,
    )
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    text = "\n".join(info.value.problems)
    assert "modle: unknown key 'modle'" in text and "allowed keys:" in text and "model" in text
    assert "train.lr_gg: unknown key 'lr_gg' (did you mean 'lr_g'?)" in text


def test_wrong_type_fixed_section(write):
    path = write(
        "r.toml",
        """
        [model]
        gf_dim = "wide"
    """,
    )
    with pytest.raises(RecipeError, match="model.gf_dim: Input should be a valid integer"):
        recipe_mod.load(path)


def test_unknown_component_near_miss(write):
    path = write(
        "r.toml",
        """
        [model]
        refiner = "gdlm"
    """,
    )
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    problem = info.value.problems[0]
    assert problem.startswith("model.refiner.name: unknown refiner 'gdlm'")
    assert "Available:" in problem


def test_overrides_parse_toml_values_and_replace_components(write):
    t2i.register("refiner", "memtest.v1", lambda p, **k: None, params=MemParams)
    path = write(
        "r.toml",
        """
        [model]
        refiner = { name = "memtest", memory_dim = 64 }
    """,
    )
    recipe = recipe_mod.load(
        path, ["model.gf_dim=12", "train.betas=[0.0, 0.99]", "model.refiner.memory_dim=7", "description=hello world"]
    )
    assert recipe.model.gf_dim == 12
    assert recipe.train.betas == (0.0, 0.99)
    assert recipe.model.refiner.params.memory_dim == 7
    assert recipe.description == "hello world"
    swapped = recipe_mod.load(path, ["model.refiner=dm"])
    assert swapped.model.refiner.entry.name.startswith("dm.v")
    assert recipe.overrides[0] == "model.gf_dim=12"


def test_bad_override_syntax(write):
    path = write("r.toml", "seed = 3")
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        recipe_mod.load(path, ["model.gf_dim"])
    with pytest.raises(RecipeError, match="is a value, not a table"):
        recipe_mod.load(path, ["seed.x=1"])


def test_extends_merges_and_child_wins(write):
    t2i.register("refiner", "memtest.v1", lambda p, **k: None, params=MemParams)
    write(
        "base.toml",
        """
        description = "base"
        [model]
        gf_dim = 5
        refiner = { name = "memtest", memory_dim = 64, mask = "legacy" }
    """,
    )
    child = write(
        "child.toml",
        """
        extends = "base.toml"
        [model]
        df_dim = 9
        refiner = { name = "memtest", memory_dim = 32 }
    """,
    )
    recipe = recipe_mod.load(child)
    assert (recipe.model.gf_dim, recipe.model.df_dim) == (5, 9)
    assert recipe.model.refiner.params.memory_dim == 32 and recipe.model.refiner.params.mask == "legacy"
    assert recipe.description == "base" and recipe.name == "child"
    # a component whose name changes is replaced whole, so old params do not leak into the new one
    other = write(
        "other.toml",
        """
        extends = "base.toml"
        [model]
        refiner = { name = "dm" }
    """,
    )
    assert recipe_mod.load(other).model.refiner.entry.name.startswith("dm.v")


def test_extends_cycle(write):
    write("a.toml", 'extends = "b.toml"')
    b = write("b.toml", 'extends = "a.toml"')
    with pytest.raises(RecipeError, match="cycle"):
        recipe_mod.load(b)


def test_missing_recipe_and_bad_toml(write, tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        recipe_mod.load(tmp_path / "nope.toml")
    bad = write("bad.toml", "[model\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        recipe_mod.load(bad)


def test_plugins_imports_registers_before_validation(write, tmp_path, monkeypatch):
    pkg = tmp_path / "myplug_recipe_mod.py"
    pkg.write_text(
        textwrap.dedent("""
        import t2i
        from t2i.registry import Params

        class P(Params):
            depth: int = 2

        @t2i.register("refiner", "plugref.v1", params=P)
        def build(params, **runtime):
            return params
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(
        "r.toml",
        """
        [plugins]
        imports = ["myplug_recipe_mod"]
        [model]
        refiner = { name = "plugref", depth = 4 }
    """,
    )
    assert recipe_mod.load(path).model.refiner.params.depth == 4
    broken = write(
        "broken.toml",
        """
        [plugins]
        imports = ["no_such_module_xyz"]
    """,
    )
    with pytest.raises(RecipeError, match="plugin module 'no_such_module_xyz' failed to import"):
        recipe_mod.load(broken)


def test_toml_round_trip_of_resolved_recipe(write):
    recipe = recipe_mod.validate({"name": "x", "model": {"gf_dim": 7}})
    text = recipe.to_toml()
    again = recipe_mod.validate(__import__("tomllib").loads(text))
    assert again.to_dict() == recipe.to_dict()


def test_alignment_list_components_validate(write):
    t2i.register(
        "alignment_loss",
        "toyalign.v1",
        lambda p, **k: None,
        params=type("AP", (Params,), {"__annotations__": {"weight": float}, "weight": Field(1.0)}),
    )
    path = write(
        "r.toml",
        """
        [train]
        alignment = [{ name = "toyalign", weight = 3.0 }, { name = "toyalign", weight = "x" }]
    """,
    )
    with pytest.raises(RecipeError, match=r"train.alignment\[1\]\(toyalign.v1\).weight"):
        recipe_mod.load(path)


def test_registry_entry_lookup_uses_registry():
    assert get_registry("refiner").resolve("dm").startswith("dm.v")
