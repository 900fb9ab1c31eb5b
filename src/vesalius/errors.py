"""The one exception type for problems a user can fix, and how it reads.

A :class:`VesaliusError` carries which file, what is wrong and what to do. The command-line tool prints it as
one line (``file: problem. remedy``) and exits with code 2; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class VesaliusError(Exception):
    """A problem with the user's input or set-up, with the remedy.

    Args:
        problem: what is wrong, e.g. ``"not a gzip file (truncated?)"``.
        file: the file or folder concerned, if any.
        remedy: what the user can do about it, e.g. ``"re-export the image"``.
    """

    def __init__(self, problem: str, file: str | Path | None = None, remedy: str | None = None) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.remedy = remedy
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The error as one line: ``file: problem. remedy``."""
        text = self.problem.rstrip(".")
        if self.file:
            text = f"{self.file}: {text}"
        if self.remedy:
            remedy = self.remedy.rstrip(".")
            text = f"{text}. {remedy[:1].upper()}{remedy[1:]}."
        else:
            text += "."
        return " ".join(text.split())
