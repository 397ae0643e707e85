"""Link profiles/<name> into Snakemake's user profile folder (~/.config/snakemake/<name>).

Snakemake >= 9.19 resolves `--profile NAME` in ./NAME, the user config dir and the site
config dir, not in ./profiles. A symlink per profile makes `snakemake --profile wsl` work
from the repository root. An existing link (say, to another clone) is replaced; a real
folder of the user's is never touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

from snakemake.cli import get_appdirs


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    user_dir = Path(get_appdirs().user_config_dir)
    user_dir.mkdir(parents=True, exist_ok=True)
    for profile in sorted(p for p in (repo / "profiles").iterdir() if p.is_dir()):
        link = user_dir / profile.name
        if link.is_symlink():
            if link.resolve() == profile.resolve():
                continue
            link.unlink()
        elif link.exists():
            print(
                f"link_profiles: {link} exists and is not a link; leaving it (use --profile {profile})", file=sys.stderr
            )
            continue
        link.symlink_to(profile, target_is_directory=True)
        print(f"link_profiles: {link} -> {profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
