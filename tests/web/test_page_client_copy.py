"""The live page runs on the project's own JS client: its vendored copy must be the built one."""

from __future__ import annotations

import importlib.util

from tests.support.processes import ROOT

_spec = importlib.util.spec_from_file_location("vendor_client", ROOT / "scripts" / "vendor_client.py")
vendor_client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vendor_client)


def test_the_build_is_newer_than_the_client_sources():
    built = (vendor_client.DIST / "index.js").stat().st_mtime
    newer = [p.name for p in (vendor_client.CLIENT / "src").glob("*.ts") if p.stat().st_mtime > built]
    assert newer == [], f"clients/js/dist is older than {newer}: run `make vendor-client`"


def test_the_page_serves_the_built_client():
    assert vendor_client.stale() == [], "the page's copy of @ticker/client is stale: run `make vendor-client`"


def test_a_changed_module_is_caught(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    for module in vendor_client.DIST.glob("*.js"):
        (dist / module.name).write_text(module.read_text())
    assert vendor_client.stale(dist=dist) == []
    (dist / "gaps.js").write_text((dist / "gaps.js").read_text() + "export const added = 1;\n")
    (dist / "extra.js").write_text("export {};\n")
    assert vendor_client.stale(dist=dist) == ["ticker-client/extra.js", "ticker-client/gaps.js"]
