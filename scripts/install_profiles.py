"""Install profiles/<name> where `snakemake --profile NAME` finds it (~/.config/snakemake/<name>).

Snakemake >= 9.19 resolves `--profile NAME` in ./NAME, the user config dir and the site config
dir, not in ./profiles. Earlier versions of this script linked the user folder to one checkout,
so the checkout that ran setup last won and a deleted checkout left a dangling link. The
profiles name nothing of a checkout (cores, executor, flags), so each one is installed as a
*copy* marked as ours: every checkout installs the same files and none depends on another.
A stale link of ours (or a dangling one) is replaced; a user's own folder is never touched.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from snakemake.cli import get_appdirs

MARKER = ".installed-by-face-sets"


def install(profile: Path, dest: Path) -> str | None:
    """Make ``dest`` a marked copy of ``profile``; return what was done (None: nothing)."""
    ours = dest.is_symlink() or (dest / MARKER).exists()
    if dest.exists() and not ours:
        return f"{dest} is not ours; leaving it (use --profile {profile})"
    same = dest.is_dir() and not dest.is_symlink() and all(
        (dest / f.name).is_file() and (dest / f.name).read_bytes() == f.read_bytes() for f in profile.iterdir()
    )
    if same:
        return None
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    for f in profile.iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    (tmp / MARKER).write_text(f"copied from {profile}; `bash scripts/setup.sh` in any checkout refreshes it\n")
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return f"{dest} <- {profile}"


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    user_dir = Path(get_appdirs().user_config_dir)
    user_dir.mkdir(parents=True, exist_ok=True)
    for profile in sorted(p for p in (repo / "profiles").iterdir() if p.is_dir()):
        done = install(profile, user_dir / profile.name)
        if done:
            print(f"install_profiles: {done}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
