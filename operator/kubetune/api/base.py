"""Shared base for every API model: camelCase on the wire, unknown fields are errors, and
cross-field rules that are written once and enforced twice (pydantic here, CEL in the CRD)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """One cross-field rule.

    `cel` runs in the API server (x-kubernetes-validations); `check` runs in pydantic, so
    `kubetune validate`, the operator and the trainer refuse exactly what admission refuses.
    `field` is the offending field relative to the model (camelCase), used as CEL `fieldPath`
    and in the error location. Transition rules (`oldSelf`) have no `check`: only the API
    server sees the old object.
    """

    cel: str
    message: str
    field: str | None = None
    check: Callable[[Any], bool] | None = None
    transition: bool = False


class KubeModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        validate_default=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> KubeModel:
        for rule in self.rules:
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError(
                    "cross_field", "{message}", {"message": rule.message, "field": rule.field or ""}
                )
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def nested(factory: type[KubeModel], description: str) -> Any:
    """A sub-object that is always present. Its CRD default is the whole default object (not
    `{}`): the API server checks CEL rules against defaults before filling nested ones."""
    return Field(
        default_factory=factory,
        description=description,
        json_schema_extra={"default": factory().to_wire()},
    )


def immutable(field: str, optional: bool = False, prefix: str = "") -> Rule:
    """A transition rule that refuses any change to `field` (also adding or removing it)."""
    if optional:
        cel = (
            f"has(self.{field}) == has(oldSelf.{field}) && "
            f"(!has(self.{field}) || self.{field} == oldSelf.{field})"
        )
    else:
        cel = f"self.{field} == oldSelf.{field}"
    return Rule(
        cel=cel,
        message=(
            f"{prefix}{field} is immutable once the job is created (only runPolicy.suspend may "
            "change); create a new FineTuneJob instead"
        ),
        field=field,
        transition=True,
    )


def cut_text(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters; else its head and tail around a marker that
    says how much was cut (the head says what failed, the tail holds the hint and the last
    log lines)."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    for _ in range(3):  # the marker's own length changes the count by a digit at most
        marker = f" [... {cut} characters cut ...] "
        cut = len(text) - (limit - len(marker))
    keep = limit - len(marker)
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head) :]
