"""Frozen records for the schedule path, without the cost of making a dataclass.

``@dataclass(frozen=True)`` writes each class's methods as source text and compiles them when its
module is imported, about a millisecond a class: `pyjob next` and `pyjob validate` import a dozen
such classes (the rule kinds, ticks, specs, day rules) and paid for them at every start. A
``Frozen`` subclass declares its fields (annotated, in the order of its ``__init__``'s
parameters), lists them in ``__slots__``, and writes its ``__init__`` (with
``object.__setattr__``, as a frozen dataclass does); equality and hashing (over ``_compared``,
every field unless the class says otherwise), ``repr``, copying and pickling, and the refusal of
any assignment come from here.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


class Frozen:
    __slots__ = ()

    _fields: ClassVar[tuple[str, ...]] = ()  # in the order of __init__'s parameters
    _compared: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, uncompared: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__slots__", ())
        slots = {own} if isinstance(own, str) else set(own)
        # In the order the fields are declared (that of __init__), not that of __slots__.
        fields = [f for f in inspect.get_annotations(cls) if f in slots]
        assert len(fields) == len(slots), f"{cls.__name__}: a field without its annotation"
        cls._fields = (*cls._fields, *fields)
        cls._compared = tuple(f for f in cls._fields if f not in uncompared)

    def _key(self) -> tuple[Any, ...]:
        return tuple([getattr(self, f) for f in self._compared])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Frozen)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        values = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self.__class__.__qualname__}({values})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, tuple([getattr(self, f) for f in self._fields])
