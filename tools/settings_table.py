"""Every ``WARP_*`` setting as one markdown table, generated from the settings classes so it cannot go stale.

    python -m tools.settings_table           # print the table
    python -m tools.settings_table --write   # replace the table in docs/operations.md (between the markers)

A setting's meaning is its ``Field(description=...)``; a setting without one is an error here.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from services.ingest.settings import IngestSettings
from services.publisher.settings import PublisherSettings
from services.trainer.settings import TrainerSettings
from services.voting.settings import VotingSettings
from shared.settings import CommonSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
# (who reads it, class): the common settings once, then each service's own.
SERVICES: tuple[tuple[str, type[CommonSettings]], ...] = (
    ("all", CommonSettings),
    ("ingest", IngestSettings),
    ("voting", VotingSettings),
    ("trainer", TrainerSettings),
    ("publisher", PublisherSettings),
)


@dataclass
class Row:
    variable: str
    meaning: str
    services: list[str] = field(default_factory=list)
    defaults: list[str] = field(default_factory=list)

    def default(self) -> str:
        if len(set(self.defaults)) == 1:
            return self.defaults[0]
        return ", ".join(
            f"{default} ({service})" for service, default in zip(self.services, self.defaults, strict=True)
        )


def _number(value: object) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _mentions(annotation: object, wanted: type) -> bool:
    if annotation is wanted:
        return True
    return any(_mentions(argument, wanted) for argument in typing.get_args(annotation))


def _enum(annotation: object) -> type[Enum] | None:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return annotation
    return next(filter(None, (_enum(argument) for argument in typing.get_args(annotation))), None)


def default_text(info: FieldInfo) -> str:
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is None or value is PydanticUndefined or _mentions(info.annotation, SecretStr):
        return "unset"
    if isinstance(value, list | tuple | set | frozenset):
        return f"`{','.join(map(str, value))}`" if value else "empty"
    if isinstance(value, Enum):
        value = value.value
    return f"`{_number(value)}`"


def meaning_text(variable: str, info: FieldInfo) -> str:
    if not info.description:
        raise ValueError(f"{variable} has no description: add Field(description=...) to its settings class")
    notes = []
    enum = _enum(info.annotation)
    if enum is not None:
        notes.append("one of " + ", ".join(f"`{member.value}`" for member in enum))
    for constraint in info.metadata:
        if isinstance(constraint, Ge):
            notes.append(f"≥ {_number(constraint.ge)}")
        elif isinstance(constraint, Gt):
            notes.append(f"> {_number(constraint.gt)}")
        elif isinstance(constraint, Le):
            notes.append(f"≤ {_number(constraint.le)}")
        elif isinstance(constraint, Lt):
            notes.append(f"< {_number(constraint.lt)}")
    text = info.description + (f" ({', '.join(notes)})" if notes else "")
    return text.replace("|", "\\|")


def rows() -> list[Row]:
    common = CommonSettings.model_fields
    found: dict[str, Row] = {}
    for service, settings_class in SERVICES:
        prefix = settings_class.model_config.get("env_prefix", "")
        for name, info in settings_class.model_fields.items():
            if service != "all" and name in common:
                if info.default != common[name].default or info.description != common[name].description:
                    raise ValueError(f"{settings_class.__name__} redefines the common setting {name!r}")
                continue
            variable = f"{prefix}{name.upper()}"
            meaning = meaning_text(variable, info)
            row = found.setdefault(variable, Row(variable, meaning))
            if row.meaning != meaning:
                raise ValueError(
                    f"{variable} means different things in different services: give it one description"
                )
            row.services.append(service)
            row.defaults.append(default_text(info))
    return list(found.values())


def render() -> str:
    lines = ["| variable | read by | default | meaning |", "| --- | --- | --- | --- |"]
    for row in rows():
        lines.append(f"| `{row.variable}` | {', '.join(row.services)} | {row.default()} | {row.meaning} |")
    return "\n".join(lines) + "\n"


def embedded(document: str) -> str:
    """The table as it stands between the markers of ``document``."""
    start, end = _bounds(document)
    return document[start:end].strip("\n") + "\n"


def splice(document: str, table: str) -> str:
    start, end = _bounds(document)
    return document[:start] + "\n" + table + document[end:]


def _bounds(document: str) -> tuple[int, int]:
    begin = document.find(BEGIN)
    end = document.find(END, begin + 1)
    if begin < 0 or end < 0:
        raise ValueError(f"the document has no {BEGIN} ... {END} block")
    return begin + len(BEGIN), end


def write(path: Path = DOC) -> bool:
    """Put the current table into ``path``; returns whether the file changed."""
    document = path.read_text()
    updated = splice(document, render())
    if updated != document:
        path.write_text(updated)
    return updated != document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.settings_table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--write", action="store_true", help="update the table in docs/operations.md")
    arguments = parser.parse_args(argv)
    if not arguments.write:
        sys.stdout.write(render())
        return 0
    changed = write(DOC)
    print(f"{DOC}: {'updated' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
