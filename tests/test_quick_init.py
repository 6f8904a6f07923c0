"""``quick_init``: the faster ``__init__`` of the objects built on every verify is the
one :mod:`dataclasses` would write, parameters, defaults and immutability alike."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from keystile import RatelimitResult, VerifyResult
from keystile._decide import Settlement
from keystile._models import Code, quick_init


@pytest.mark.parametrize("cls", [VerifyResult, RatelimitResult, Settlement])
def test_the_parameters_are_the_fields_with_their_defaults(cls: type[Any]) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields]


@pytest.mark.parametrize("cls", [VerifyResult, RatelimitResult, Settlement])
def test_every_field_is_set_by_position_or_name_and_stays_frozen(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    values = [object() for _ in fields]
    by_position, by_name = cls(*values), cls(**{f.name: v for f, v in zip(fields, values, strict=True)})
    for made in (by_position, by_name):
        assert [getattr(made, f.name) for f in fields] == values
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(made, fields[0].name, None)
    assert by_position == by_name
    required = [f for f in fields if f.default is dataclasses.MISSING]
    minimal, rest = cls(*values[:len(required)]), fields[len(required):]
    assert [getattr(minimal, f.name) for f in rest] == [f.default for f in rest]
    with pytest.raises(TypeError):
        cls(*values, None)  # one too many, as dataclasses would refuse


def test_a_result_is_built_as_before() -> None:
    result = VerifyResult(valid=False, code=Code.NOT_FOUND)
    assert (result.valid, result.code, result.key_id, result.ratelimits) == (False, Code.NOT_FOUND, None, ())
    assert dataclasses.replace(result, key_id="key_1") == VerifyResult(False, Code.NOT_FOUND, "key_1")


def test_classes_it_cannot_serve_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithFactory:
        items: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True)
    class WithPostInit:
        value: int

        def __post_init__(self) -> None:
            pass

    for cls in (WithFactory, WithPostInit):
        with pytest.raises(TypeError):
            quick_init(cls)


def test_kw_only_initvar_and_inherited_post_init_are_refused() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class KwOnly:
        value: int

    @dataclasses.dataclass(frozen=True)
    class WithInitVar:
        value: int
        extra: dataclasses.InitVar[int] = 0

    @dataclasses.dataclass(frozen=True)
    class Base:
        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class Child(Base):
        value: int = 0

    for cls in (KwOnly, WithInitVar, Child):
        with pytest.raises(TypeError):
            quick_init(cls)


def test_the_init_is_in_its_class_module() -> None:
    assert VerifyResult.__init__.__module__ == VerifyResult.__module__
