"""What the SBC's and the Teams emulator's config files share: strict frozen models, and reading
a YAML file into one with errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are refused (a typo must not silently fall back to a default); frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: Path, error: type[Exception], what: str = "") -> object:
    """The YAML document in ``path``; ``error`` says why when it cannot be read or parsed
    (``what``, e.g. ``"config file "``, stands before the path in the first case)."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what}{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from exc


def validate(model: type[M], raw: object, source: str, error: type[Exception]) -> M:
    """``raw`` as a ``model``; any problem becomes one ``error`` naming each key and why."""
    if not isinstance(raw, dict):
        raise error(f"{source}: the top level must be a mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise error(f"{source}: {problems}") from exc
