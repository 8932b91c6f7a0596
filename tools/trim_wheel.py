"""Rewrites a wheel without the files under the given path prefixes (and without their lines in
its RECORD), so that a package fits a device call's carried files; ``tools/gpu_wheels.sh``
uses it for the DMC packages.

    python tools/trim_wheel.py WHEEL PREFIX [PREFIX ...]
"""

from __future__ import annotations

import os
import sys
import zipfile


def trim(wheel: str, prefixes: list[str]) -> tuple[int, int]:
    """Removes the members under ``prefixes`` in place: (members removed, compressed bytes saved)."""
    tmp = wheel + ".tmp"
    removed = saved = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(tuple(prefixes)):
                removed, saved = removed + 1, saved + info.compress_size
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(tuple(prefixes))).encode()
            dst.writestr(info, data)
    os.replace(tmp, wheel)
    return removed, saved


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit(__doc__)
    removed, saved = trim(argv[1], argv[2:])
    if removed == 0:
        sys.exit(f"{argv[1]}: nothing under {argv[2:]}; the wheel's layout changed, check the prefixes")
    print(f"{os.path.basename(argv[1])}: {removed} files removed, {saved / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv)
