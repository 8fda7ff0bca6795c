"""Brings TradingView's lightweight-charts into the dashboard, pinned: rerun to update it.

    python scripts/vendor_lightweight_charts.py            # the pinned VERSION
    python scripts/vendor_lightweight_charts.py 5.3.0      # another one (then pin it here)

Downloads the package's tarball from the npm registry with the standard library only,
checks it against the `dist.integrity` hash (SHA-512) that the registry's metadata gives
for that version, and writes the standalone ES-module build (fancy-canvas bundled in) and
the package's licence under app/web/static/vendor/. The file name carries the version, so
the server can let browsers cache it for good. Older copies are removed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "lightweight-charts"
VERSION = "5.2.1"
REGISTRY = "https://registry.npmjs.org"
BUILD = "package/dist/lightweight-charts.standalone.production.mjs"
LICENCE = "package/LICENSE"
VENDOR = Path(__file__).resolve().parent.parent / "app" / "web" / "static" / "vendor"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        body: bytes = response.read()
        return body


def verified_tarball(version: str) -> bytes:
    metadata = json.loads(fetch(f"{REGISTRY}/{PACKAGE}/{version}"))
    dist = metadata["dist"]
    tarball = fetch(dist["tarball"])
    check_integrity(tarball, dist["integrity"], f"{PACKAGE}@{version}")
    return tarball


def check_integrity(data: bytes, integrity: str, name: str) -> None:
    """Raises SystemExit unless `data` has the Subresource-Integrity-style `sha512-...`
    hash that the registry published."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"unexpected integrity algorithm {algorithm!r} for {name}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{name}: the tarball does not match its integrity hash")


def main(argv: list[str]) -> int:
    version = argv[0] if argv else VERSION
    tarball = verified_tarball(version)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        build = archive.extractfile(BUILD)
        licence = archive.extractfile(LICENCE)
        if build is None or licence is None:
            raise SystemExit(f"{PACKAGE}@{version} has no {BUILD} or {LICENCE}")
        build_bytes, licence_bytes = build.read(), licence.read()
    VENDOR.mkdir(parents=True, exist_ok=True)
    for old in VENDOR.glob(f"{PACKAGE}-*"):
        old.unlink()
    target = VENDOR / f"{PACKAGE}-{version}.standalone.production.mjs"
    target.write_bytes(build_bytes)
    (VENDOR / f"{PACKAGE}-{version}.LICENSE").write_bytes(licence_bytes)
    print(f"{target.relative_to(VENDOR.parent.parent.parent.parent)}: {len(build_bytes)} bytes")  # noqa: T201
    if version != VERSION:
        print(f"now pin VERSION = {version!r} in {Path(__file__).name} and in app/web/static")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
