"""A Dockerfile read into its instructions, the way Docker's parser splits it: comment lines dropped
(inside continued lines too), a trailing backslash joining a line to the next. Enough to check the
repository's own Dockerfile without Docker; not a general parser (no heredocs, no escape directive)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# Every instruction Docker's reference documents.
INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
        "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, as Docker compares it
    arguments: str
    line: int  # where it starts, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD / ENTRYPOINT / RUN in exec form, else None (shell form)."""
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass(frozen=True)
class Stage:
    image: str  # as written, before ARG substitution
    name: str | None
    instructions: list[Instruction]


def read(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, arguments = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
            pending = []
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


def global_arguments(instructions: list[Instruction]) -> dict[str, str | None]:
    """The ARGs declared before the first FROM (only FROM lines can use them), with their defaults."""
    declared: dict[str, str | None] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, eq, default = instruction.arguments.partition("=")
            declared[name] = default.strip("\"'") if eq else None
    return declared


def stages(instructions: list[Instruction]) -> list[Stage]:
    found: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name, []))
        elif found:
            found[-1].instructions.append(instruction)
    return found


def variables(text: str) -> list[str]:
    return _VARIABLE.findall(text)


def substitute(text: str, values: dict[str, str | None]) -> str:
    return _VARIABLE.sub(lambda match: values.get(match.group(1)) or "", text)
