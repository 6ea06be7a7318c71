"""t2i: a research toolkit for text-to-image GANs (AttnGAN, MirrorGAN, DM-GAN, DMM-GAN).

Importing t2i is cheap: nothing is loaded until it is used, and torch only by the
parts that compute. Register a component of your own with
``@t2i.register(kind, "name.v1", params=MyParams)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Params", "__version__", "get_registry", "register", "registries"]

if TYPE_CHECKING:
    from t2i.registry import Params, get_registry, register, registries


def __getattr__(name: str) -> Any:
    if name in {"Params", "get_registry", "register", "registries"}:
        from t2i import registry

        return getattr(registry, name)
    raise AttributeError(f"module 't2i' has no attribute {name!r}")
