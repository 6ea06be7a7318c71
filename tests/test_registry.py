from __future__ import annotations

import pytest
from pydantic import Field

import t2i
from t2i import registry
from t2i.registry import DuplicateComponentError, Params, UnknownComponentError, UnknownKindError


class WidthParams(Params):
    width: int = Field(8, description="channels")


def test_register_decorator_versions_and_bare_name_resolves_to_newest():
    @t2i.register("refiner", "toy.v1", params=WidthParams, description="first")
    class ToyV1:
        def __init__(self, params, **runtime):
            self.params, self.runtime = params, runtime

    @t2i.register("refiner", "toy.v2", params=WidthParams)
    class ToyV2(ToyV1):
        """Second version of the toy."""

    reg = registry.get_registry("refiner")
    assert reg.resolve("toy") == "toy.v2"
    assert reg.resolve("toy.v1") == "toy.v1"
    entry = reg.get("toy")
    assert entry.description == "Second version of the toy."
    assert entry.defined_at.endswith("ToyV2")
    built = reg.build("toy.v1", {"width": 3}, image_dim=4)
    assert isinstance(built, ToyV1) and built.params.width == 3 and built.runtime == {"image_dim": 4}
    assert reg.get("toy.v1").description == "first"


def test_unversioned_registration_gets_v1():
    t2i.register("metric", "toy_metric", lambda params: 1.0, description="x")
    assert "toy_metric.v1" in registry.get_registry("metric").names()


def test_reregistering_same_object_is_noop_and_different_object_errors():
    def make(params):
        return params

    t2i.register("refiner", "dup.v1", make)
    t2i.register("refiner", "dup.v1", make)  # notebook re-run: fine

    def other(params):
        return None

    with pytest.raises(DuplicateComponentError, match="override=True"):
        t2i.register("refiner", "dup.v1", other)
    t2i.register("refiner", "dup.v1", other, override=True)
    assert registry.get_registry("refiner").get("dup").factory is other


def test_unknown_name_lists_available_close_matches_and_how_to_register():
    t2i.register("refiner", "gldmx.v1", lambda p: None)
    with pytest.raises(UnknownComponentError) as info:
        registry.get_registry("refiner").get("gldmy")
    message = str(info.value)
    assert "Available:" in message and "gldmx.v1" in message
    suggestion = message.split("Did you mean ", 1)[1].split("?", 1)[0]
    assert "'gldmx'" in suggestion and "'gldm'" in suggestion
    assert "--code" in message and "t2i.plugins" in message


def test_unknown_kind():
    with pytest.raises(UnknownKindError, match="refiner"):
        registry.get_registry("refiners")


def test_params_inferred_from_keyword_only_signature():
    def factory(params, *, size: int = 4, name: str = "x"):
        return params

    t2i.register("metric", "sig.v1", factory)
    entry = registry.get_registry("metric").get("sig")
    assert entry.validate({"size": 7}).size == 7
    with pytest.raises(Exception, match="Extra inputs"):
        entry.validate({"nope": 1})


def test_invalid_names_rejected():
    with pytest.raises(registry.ComponentError, match="invalid component name"):
        t2i.register("refiner", "Bad Name", lambda p: None)


def test_import_t2i_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, t2i, t2i.registry, t2i.recipe, t2i.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_snapshot_restores():
    reg = registry.get_registry("metric")
    with reg.snapshot():
        t2i.register("metric", "temp.v1", lambda p: None)
        assert "temp.v1" in reg.names()
    assert "temp.v1" not in reg.names()
