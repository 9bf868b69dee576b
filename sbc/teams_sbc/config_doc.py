"""Render docs/config.md from the config schema itself, so the documentation cannot drift.

`python -m teams_sbc.config_doc > docs/config.md`; a test fails when the file is out of date.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from teams_sbc.config import SbcConfig

HEADER = """# The SBC's config file

`teams-sbc run --config FILE` reads one YAML file; `teams-sbc check-config --config FILE` validates
it and prints it with every default filled in. The operator renders the same file into each SBC
pod's ConfigMap. Unknown keys are errors. This page is generated from the schema in
`sbc/teams_sbc/config.py` by `python -m teams_sbc.config_doc`; do not edit it by hand.

Example: `examples/sbc.yaml`.
"""


def _type_name(annotation: Any) -> str:
    origin = getattr(annotation, "__origin__", None)
    args: tuple[Any, ...] = getattr(annotation, "__args__", ())
    if origin is Literal:
        text = " or ".join(json.dumps(a) for a in args)
    elif origin is list and args:
        text = f"list of {_type_name(args[0])}"
    elif origin is dict and len(args) == 2:
        key, value = args
        text = f"map of {_type_name(key)} to {_type_name(value)}"
    elif args:
        text = " or ".join(_type_name(a) for a in args)
    else:
        text = getattr(annotation, "__name__", None) or str(annotation)
    return str(text).replace("NoneType", "null").replace("|", "\\|")


def _section(model: type[BaseModel], path: str, out: list[str], seen: set[str]) -> None:
    out.append(f"\n## `{path}`\n")
    if model.__doc__:
        out.append(" ".join(model.__doc__.split()) + "\n")
    out.append("| key | type | default | meaning |")
    out.append("| --- | --- | --- | --- |")
    nested: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if field.default is not PydanticUndefined:
            default = f"`{json.dumps(field.default)}`"
        elif field.default_factory is not None:
            default = "(see below)"
        else:
            default = "required"
        out.append(
            f"| `{name}` | {_type_name(annotation)} | {default} | {field.description or ''} |"
        )
        for arg in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in seen:
                seen.add(arg.__name__)
                origin = getattr(annotation, "__origin__", None)
                suffix = "[]" if origin is list else ".<name>" if origin is dict else ""
                nested.append(
                    (arg, f"{path}.{name}{suffix}" if path != "(top level)" else name + suffix)
                )
    for sub, sub_path in nested:
        _section(sub, sub_path, out, seen)


def render() -> str:
    out = [HEADER]
    _section(SbcConfig, "(top level)", out, {SbcConfig.__name__})
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
