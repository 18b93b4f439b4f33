"""The registry of output kinds: the built-ins register the way a family registers its own, and
a later registration of a name replaces the earlier one (a package's `image` overrides ours).

Another package's kinds are found without importing it first through the entry-point group
`tritonforge.output_kinds` (`depth_confidence = "package.module:DepthConfidence"`, or a module
that registers its kinds on import); a family registers its kinds in its own package.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TypeVar

from tritonforge.errors import TritonForgeError
from tritonforge.outputs.kind import OutputKind
from tritonforge.spec import KIND_NAME

ENTRY_POINT_GROUP = "tritonforge.output_kinds"

_KINDS: dict[str, OutputKind] = {}
K = TypeVar("K", bound=type[OutputKind])


def register_kind(cls: K) -> K:
    """Class decorator: make an output kind available by its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not KIND_NAME.fullmatch(name):
        raise TritonForgeError(f"output kind {cls.__name__} has name {name!r}: give it a lowercase "
                               "identifier (`name = \"depth_map\"`), the string manifests carry")
    _KINDS[name] = cls()
    return cls


def known_kinds() -> list[str]:
    return sorted(_KINDS)


def output_kind(name: str, output: str | None = None) -> OutputKind:
    """The kind registered as `name` (`output`: the output that declares it, for the error)."""
    if name not in _KINDS:
        point = next((p for p in entry_points(group=ENTRY_POINT_GROUP) if p.name == name), None)
        loaded = point.load() if point is not None else None
        if isinstance(loaded, type) and issubclass(loaded, OutputKind) and name not in _KINDS:
            register_kind(loaded)
    if name not in _KINDS:
        whose = f"output {output!r} has kind {name!r}" if output else f"output kind {name!r}"
        raise TritonForgeError(
            f"{whose}, which nothing installed registers (known kinds: {', '.join(known_kinds())}): "
            "install the package of the family that exported the model (it registers its kinds), "
            "or register the kind with tritonforge.outputs.register_kind")
    return _KINDS[name]
