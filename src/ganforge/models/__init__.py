"""Networks, rebuilt from a JSON-able spec: no pickled code, ever."""

from ganforge.models.registry import (
    GeneratorSpec,
    build_discriminator,
    build_generator,
    load_generator,
    save_generator,
)

__all__ = ["GeneratorSpec", "build_discriminator", "build_generator", "load_generator", "save_generator"]
