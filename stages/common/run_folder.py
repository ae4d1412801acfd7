"""An output folder a command writes into (`--output`): the project never deletes or replaces what it did not
write there.

A folder carries `.adpa-run.json` naming its owner (a distill run's key, `eval`, `demo`). An existing folder
that is not empty and not the same owner's is refused in one line before anything is written into it;
`overwrite` replaces what the command writes there (its `outputs`) and leaves every other file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from adpa.artifacts.fsutil import atomic_write_bytes

MARKER = ".adpa-run.json"
IGNORED = (".lock",)  # exclusive_folder's lock: a run that was refused or died leaves it


class FolderRefused(ValueError):
    pass


def owner_of(folder: Path) -> str | None:
    marker = Path(folder) / MARKER
    try:
        owner = json.loads(marker.read_text()).get("run") if marker.is_file() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "(unreadable)"
    return owner if isinstance(owner, str) else "(unreadable)" if owner is not None else None


def claim(folder: Path, owner: str, outputs: tuple[str, ...], overwrite: bool, check_only: bool = False) -> None:
    """Make `folder` `owner`'s (see the module docstring); `check_only`: refuse or accept, write nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderRefused(f"--output {folder} is a file, not a folder")
    present = sorted(p.name for p in folder.iterdir() if p.name not in IGNORED) if folder.is_dir() else []
    found = owner_of(folder)
    if present and found != owner:
        if not overwrite:
            listed = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            what = f"the output of {found}" if found else f"files no adpa command wrote ({listed})"
            raise FolderRefused(f"--output {folder} holds {what}; choose another --output, or pass --overwrite to "
                                f"replace what this command writes there ({', '.join(outputs)})")
        if not check_only:
            for name in (*outputs, MARKER):
                p = folder / name
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    if not check_only:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / MARKER, json.dumps({"run": owner}).encode())
