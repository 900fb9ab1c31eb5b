"""Where a command may write: never over, into or around its inputs, and only where the user can expect it.

Every command that takes an output path checks it here before any long work starts, so a wrong path costs a second,
not an inference run, and an input can never be replaced by a result (predicting a folder into itself used to
replace each image with its label map).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from vesalius.errors import VesaliusError

__all__ = ["check_output"]


def _overlap(output: Path, source: Path) -> str | None:
    """How ``output`` collides with the input ``source`` (both resolved), or ``None``."""
    if output == source:
        return "is"
    if source in output.parents:
        return "lies inside"
    if output in source.parents:
        return "contains"
    return None


def check_output(
    output: str | Path,
    inputs: Sequence[str | Path | None],
    *,
    kind: Literal["file", "folder"],
    suffixes: Sequence[str] = (),
    option: str = "--output",
) -> Path:
    """``output`` as given, once checked: it must not be, contain or lie inside any of ``inputs`` (``None`` entries
    are skipped); a ``folder`` output must not be an existing file, a ``file`` output not an existing folder, and a
    file output must end in one of ``suffixes`` (case-insensitive) when they are given.

    Raises:
        VesaliusError: naming the output and saying what to do.
    """
    output = Path(output)
    resolved = output.resolve()
    for source in inputs:
        if source is None:
            continue
        how = _overlap(resolved, Path(source).resolve())
        if how:
            raise VesaliusError(
                f"the output {how} the input {source}: inputs are never written to",
                output,
                f"give {option} a path outside the inputs",
            )
    existing = next((a for a in (resolved, *resolved.parents) if a.exists()), None)
    if existing is not None and existing != resolved and not existing.is_dir():
        raise VesaliusError(
            f"cannot create the output: {existing} is a file, not a folder", output, f"give {option} another path"
        )
    if kind == "folder" and output.exists() and not output.is_dir():
        raise VesaliusError(
            "the output must be a folder, but this is an existing file", output, f"give {option} a folder"
        )
    if kind == "file":
        if output.is_dir():
            raise VesaliusError(
                "the output must be a file, but this is an existing folder", output, f"give {option} a file name"
            )
        name = output.name.lower()
        if suffixes and not any(name.endswith(s) for s in suffixes):
            raise VesaliusError(
                f"cannot write '{output.suffix or output.name}' files here",
                output,
                f"give {option} a name ending in {' or '.join(suffixes)}",
            )
    return output
