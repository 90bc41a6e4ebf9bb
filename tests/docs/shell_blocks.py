"""The fenced shell blocks of the project's Markdown, as the doc-commands test reads them.

A block is a fence tagged sh, bash, shell or console. The line right before it
(blank lines skipped) may be `<!-- illustrative: REASON -->`: the block is
then not run, and REASON says why. A block's commands are its logical lines:
backslash continuations joined, blank and comment-only lines left out, and in
a console block only the `$ ` lines (the rest is output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<language>[\w+-]*)\s*$")
_ILLUSTRATIVE = re.compile(r"^\s*<!--\s*illustrative:\s*(?P<reason>\S.*?)\s*-->\s*$")
# A command that runs a server: the harness starts it in the background and stops it with SIGTERM.
_SERVER = re.compile(r"(^|[\s/])(make serve|forgesyte-stream serve)\b")


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown whose commands users are told to run."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "contracts" / "README.md", root / "clients" / "python" / "README.md"]


@dataclass(frozen=True)
class ShellBlock:
    document: str  # relative to the repository root, with forward slashes
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    illustrative: str | None  # the marker's reason; None: the block must be run

    @property
    def first_command(self) -> str:
        commands = self.commands()
        return commands[0] if commands else ""

    @property
    def key(self) -> tuple[str, str]:
        """What the test's table names the block by: its document and first command, without a trailing comment."""
        return (self.document, strip_comment(self.first_command))

    def where(self) -> str:
        return f"{self.document}:{self.line}"

    def commands(self, text: str | None = None) -> list[str]:
        """The logical command lines of `text` (default: the block's own text)."""
        return commands_of(self.text if text is None else text, console=self.language == "console")


def commands_of(text: str, *, console: bool = False) -> list[str]:
    found: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if console and not pending:
            if not line.lstrip().startswith("$ "):
                continue
            line = line.lstrip()[2:]
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line.strip()
        pending = ""
        if line and not line.startswith("#"):
            found.append(line)
    if pending.strip():
        found.append(pending.strip())
    return found


def is_server(command: str) -> bool:
    return _SERVER.search(command) is not None


def without_background(command: str) -> str:
    """The command without a trailing `&` (the harness backgrounds a server itself), comment kept out."""
    code = strip_comment(command)
    return code[:-1].rstrip() if code.endswith("&") and not code.endswith("&&") else command


def strip_comment(command: str) -> str:
    # Outside quotes, ` #` starts a comment (enough for the commands the docs hold).
    quote = ""
    for position, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or command[position - 1].isspace()):
            return command[:position].rstrip()
    return command.rstrip()


def shell_blocks(path: Path, root: Path = ROOT) -> list[ShellBlock]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[ShellBlock] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        end = index + 1
        while end < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        language = opening["language"].lower()
        if language in SHELL_LANGUAGES:
            indent = len(opening["indent"])
            body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[index + 1 : end])
            blocks.append(
                ShellBlock(
                    document=path.relative_to(root).as_posix(),
                    line=index + 1,
                    language=language,
                    text=body,
                    illustrative=_marker_before(lines, index),
                )
            )
        index = end + 1
    return blocks


def _marker_before(lines: list[str], fence_index: int) -> str | None:
    previous = fence_index - 1
    while previous >= 0 and not lines[previous].strip():
        previous -= 1
    if previous < 0:
        return None
    marker = _ILLUSTRATIVE.match(lines[previous])
    return marker["reason"] if marker else None


def all_shell_blocks(root: Path = ROOT) -> list[ShellBlock]:
    return [block for path in documents(root) for block in shell_blocks(path, root)]
