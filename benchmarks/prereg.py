"""The registered protocol of `make bench-quality` (docs/PREREG-v4.md, docs/PREREG-v4.json).

`check()` refuses a run whose analysis code is not the registered one, and names the commit that
registered the protocol, which the results record: a reader can then see in git history that the
prereg came before the world and the numbers.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREREG = ROOT / "docs" / "PREREG-v4.json"


class NotRegistered(SystemExit):
    """The analysis code or the prereg file is not what was registered."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(prereg: Path = PREREG) -> dict:
    """The prereg as registered, after checking that its analysis file has the registered sha256."""
    spec = json.loads(prereg.read_text())
    analysis = ROOT / spec["analysis"]["file"]
    got = sha256(analysis)
    if got != spec["analysis"]["sha256"]:
        raise NotRegistered(f"{spec['analysis']['file']}: sha256 {got[:12]} is not the registered "
                            f"{spec['analysis']['sha256'][:12]} of {prereg.name}; a new analysis is a new "
                            f"version with its own prereg")
    return spec


def first_commit(path: Path) -> str:
    """The commit that added `path` (git log --diff-filter=A), or "unknown" without git history."""
    try:
        out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out[-1] if out else "unknown"
