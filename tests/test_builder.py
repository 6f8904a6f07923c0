"""``builder``: the constructor the hot paths use for the objects built on every
spending verify makes true, frozen instances, equal to what the dataclass builds."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest

from keystile import RatelimitResult, VerifyResult
from keystile._decide import Settlement, build_result, new_ratelimit_result, new_settlement
from keystile._models import Code, builder


@pytest.mark.parametrize("cls", [VerifyResult, RatelimitResult, Settlement])
def test_it_builds_a_true_frozen_instance_equal_to_the_dataclass_one(cls: type[Any]) -> None:
    build = builder(cls)
    fields = dataclasses.fields(cls)
    values = [f"value {i}" for i in range(len(fields))]
    made, expected = build(*values), cls(*values)
    assert type(made) is cls and isinstance(made, cls)
    assert [getattr(made, f.name) for f in fields] == values
    assert made == expected and hash(made) == hash(expected) and repr(made) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, None)
    assert dataclasses.replace(made, **{fields[0].name: "other"}) == cls("other", *values[1:])
    assert pickle.loads(pickle.dumps(made)) == made and copy.deepcopy(made) == made
    with pytest.raises(TypeError):
        build(*values[:-1])  # every field, always: no defaults


def test_the_hot_paths_builders_are_the_module_ones() -> None:
    limit = new_ratelimit_result("api", 10, 1000, 9, 2000, False, "rl_1", True)
    assert limit == RatelimitResult("api", 10, 1000, 9, 2000, False, "rl_1", True)
    settled = new_settlement(Code.VALID, (limit,), 5, None)
    assert settled == Settlement(Code.VALID, (limit,), 5)
    assert build_result(Code.NOT_FOUND, None) == VerifyResult(False, Code.NOT_FOUND)


def test_classes_it_cannot_serve_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        value: int

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        value: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithPostInit:
        value: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        value: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Child(Base):
        more: int

    for cls in (NoSlots, NotFrozen, WithPostInit, Child, int):
        with pytest.raises(TypeError):
            builder(cls)
