"""Copy the built JS client (`clients/js/dist`, `@ticker/client`) into the live page's static files.

The page loads only what the app serves and runs under `script-src 'self'`, so there is no
bundler, no CDN and no import map (an inline script): the client's ES modules are copied as
they are, except that the bare specifier `"socket.io-client"` becomes the relative path of
socket.io-client's own ES module build, vendored beside them, and the source-map comments go
(the maps point at TypeScript sources the app does not serve).

    python scripts/vendor_client.py           # write ticker/web/static/vendor/ (make vendor-client)
    python scripts/vendor_client.py --check   # exit 1, naming the files, if the copy is stale

Run `npm run build` in clients/js first (`make vendor-client` does both).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "js"
DIST = CLIENT / "dist"
SOCKET_IO_ESM = CLIENT / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
VENDOR = ROOT / "ticker" / "web" / "static" / "vendor"
TARGET = VENDOR / "ticker-client"
SOCKET_IO_NAME = "socket.io.esm.min.js"  # in VENDOR, beside TARGET

_BARE_IMPORT = re.compile(r'(from\s+)"socket\.io-client"')
_SOURCE_MAP = re.compile(r"\n?//# sourceMappingURL=\S+\s*$")


def expected(dist: Path = DIST, socket_io: Path = SOCKET_IO_ESM) -> dict[Path, str]:
    """What the vendored files should hold: path (under ticker/web/static/vendor) -> text.
    Raises FileNotFoundError when the client is not built or its dependencies not installed."""
    modules = sorted(dist.glob("*.js"))
    if not modules:
        raise FileNotFoundError(f"no built client in {dist}: run `npm run build` in clients/js")
    files = {Path(SOCKET_IO_NAME): socket_io.read_text()}
    for module in modules:
        text = _BARE_IMPORT.sub(rf'\1"../{SOCKET_IO_NAME}"', module.read_text())
        files[Path(TARGET.name) / module.name] = _SOURCE_MAP.sub("", text).rstrip("\n") + "\n"
    return files


def stale(vendor: Path = VENDOR, dist: Path = DIST) -> list[str]:
    """Vendored files that differ from (or are missing against, or are extra to) the built client."""
    want = expected(dist)
    have = {Path(TARGET.name) / p.name for p in (vendor / TARGET.name).glob("*.js")}
    wrong = [str(path) for path, text in want.items()
             if not (vendor / path).exists() or (vendor / path).read_text() != text]
    return sorted(wrong + [f"{path} (no such module in dist)" for path in have - set(want)])


def write(vendor: Path = VENDOR, dist: Path = DIST) -> None:
    """Replace the vendored client with the built one."""
    (vendor / TARGET.name).mkdir(parents=True, exist_ok=True)
    for old in (vendor / TARGET.name).glob("*.js"):
        old.unlink()
    for path, text in expected(dist).items():
        (vendor / path).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report a stale copy instead of writing one")
    args = parser.parse_args()
    if args.check:
        wrong = stale()
        for path in wrong:
            print(f"stale: ticker/web/static/vendor/{path}", file=sys.stderr)
        return 1 if wrong else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
