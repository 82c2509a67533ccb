"""The live page at `/`, driven in headless Chromium against the running service."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import requests
from flask_socketio import SocketIO
from sqlalchemy import text

from tests.conftest import REDIS_URL
from tests.support.processes import ROOT, wait_for
from tests.web.webproc import start_web
from ticker.bus import keys
from ticker.db import engine_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "artifacts"
# Headless, and nothing that would reach the internet (updates, sync, QUIC probes).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,900",
]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed: `make browser` installs them")
    profile = tempfile.mkdtemp(prefix="ticker-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def text_of(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.CSS_SELECTOR, selector)
    return elements[0].text if elements else ""


def fill(driver, selector: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.CSS_SELECTOR, selector)
    element.clear()
    element.send_keys(value)


def click(driver, selector: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()


def on_screen(driver, condition, timeout: float, what: str, interval: float = 0.1) -> None:
    """wait_for, and on a timeout say what the page showed and logged."""
    try:
        wait_for(condition, timeout, what, interval)
    except AssertionError as exc:
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "live-page-failure.png"))
        shown = {s: text_of(driver, s) for s in ("#status-text", "#connect-error", "#subscribe-error", "#search-note")}
        raise AssertionError(f"{exc}; page: {shown}; console: {driver.get_log('browser')}") from None


def token_of(database: str, exchange: str, symbol: str) -> int:
    with engine_for(database).connect() as connection:
        return connection.execute(
            text("SELECT instrument_token FROM instruments WHERE exchange = :e AND tradingsymbol = :s"),
            {"e": exchange, "s": symbol},
        ).scalar_one()


def test_a_developer_connects_subscribes_and_watches_prices_move(browser, stack, make_token, database):
    from selenium.webdriver.support.ui import Select

    browser.get(f"{stack['url']}/")
    fill(browser, "#token", make_token("page-user"))
    click(browser, "#connect")
    on_screen(browser, lambda: text_of(browser, "#status-text") == "connected as page-user", 15, "connecting")

    fill(browser, "#search", "NSE:INFY NSE:TCS")
    Select(browser.find_element("css selector", "#mode")).select_by_value("full")
    click(browser, "#subscribe")
    row = f"#board tr[data-token='{token_of(database, 'NSE', 'INFY')}']"
    on_screen(browser, lambda: text_of(browser, f"{row} td.price") not in ("", "–"), 15, "a first price")

    first_seq = int(browser.find_element("css selector", row).get_attribute("data-seq"))
    prices = set()

    def moved() -> bool:
        prices.add(text_of(browser, f"{row} td.price"))
        seq = int(browser.find_element("css selector", row).get_attribute("data-seq"))
        return seq >= first_seq + 3 and len(prices) >= 2

    on_screen(browser, moved, 20, "prices to update on screen", interval=0.2)
    assert text_of(browser, f"{row} td.name") == "NSE:INFY"
    assert text_of(browser, f"{row} td.mode") == "full"
    assert text_of(browser, f"{row} td.volume") not in ("", "–")
    assert text_of(browser, f"{row} td.change").endswith("%")
    tcs = f"#board tr[data-token='{token_of(database, 'NSE', 'TCS')}']"
    assert text_of(browser, f"{tcs} td.name") == "NSE:TCS"
    # Full mode shows five levels of depth a side; the header shows the round trip.
    wait_for(lambda: len(browser.find_elements("css selector", "tr.depth:not([hidden]) table.depth tr")) >= 12,
             10, "market depth")
    wait_for(lambda: text_of(browser, "#latency").startswith("rtt "), 10, "the latency figure")
    points = browser.find_element("css selector", f"{row} svg.spark polyline").get_attribute("points")
    assert len(points.split()) >= 3, points

    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "live-page.png"))

    click(browser, f"{row} button")
    wait_for(lambda: not browser.find_elements("css selector", row), 5, "the row to go on unsubscribe")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and not _expected(e["message"])]
    assert errors == [], errors


def _expected(message: str) -> bool:
    """Console errors that say nothing is wrong: search not deployed on this server."""
    return "/instruments?" in message


def test_a_refused_token_shows_its_error_code(browser, stack):
    browser.get(f"{stack['url']}/")
    fill(browser, "#token", "not-a-jwt")
    click(browser, "#connect")

    wait_for(lambda: text_of(browser, "#status-text") == "token_invalid", 10, "the refusal on the page")
    assert text_of(browser, "#connect-error").startswith("token_invalid: ")


def test_the_page_loads_nothing_from_elsewhere(stack):
    page = requests.get(f"{stack['url']}/", timeout=5)
    app = requests.get(f"{stack['url']}/assets/app.js", timeout=5)
    client = requests.get(f"{stack['url']}/assets/vendor/ticker-client/client.js", timeout=5)
    socket_io = requests.get(f"{stack['url']}/assets/vendor/socket.io.esm.min.js", timeout=5)

    policy = page.headers["Content-Security-Policy"]
    assert page.status_code == 200 and "default-src 'self'" in policy and "script-src 'self';" in policy
    assert "http://" not in page.text.replace(stack["url"], "") and "https://" not in page.text
    assert '<script type="module"' in page.text and "<script>" not in page.text  # nothing inline
    # The page runs on @ticker/client, which imports socket.io-client's ES module build by path.
    assert 'from "./vendor/ticker-client/index.js"' in app.text
    assert client.status_code == 200 and 'from "../socket.io.esm.min.js"' in client.text
    assert socket_io.status_code == 200 and socket_io.text.startswith("/*!\n * Socket.IO v4")
    assert "Released under the MIT License" in socket_io.text[:200]


def test_development_tokens_exist_only_in_development(stack, workdir):
    from ticker import create_app
    from ticker.config import TestConfig
    from ticker.web.auth import verify

    assert requests.post(f"{stack['url']}/dev/token", timeout=5).status_code == 404  # TICKER_ENV=test
    assert 'id="dev-token"' not in requests.get(f"{stack['url']}/", timeout=5).text

    class Development(TestConfig):
        ENV = "development"
        JWT_PUBLIC_KEY = JWT_PRIVATE_KEY = JWT_DECODE_AUDIENCE = JWT_DECODE_ISSUER = None
        JWT_ENCODE_AUDIENCE = JWT_ENCODE_ISSUER = None
        JWT_DEV_KEY_DIR = workdir / "dev-keys"

    app = create_app(Development)
    client = app.test_client()
    assert 'id="dev-token"' in client.get("/").text
    reply = client.post("/dev/token").get_json()
    renewed = client.post("/dev/token", json={"user": reply["user"]}).get_json()  # how the page renews
    with app.app_context():
        assert verify(reply["token"])["sub"] == reply["user"]
        assert verify(renewed["token"])["sub"] == renewed["user"] == reply["user"]
    assert client.post("/dev/token", json={"user": "page-user"}).status_code == 400  # only its own users


def connected_page(browser, stack, make_token, user: str) -> None:
    browser.get(f"{stack['url']}/")
    fill(browser, "#token", make_token(user))
    click(browser, "#connect")
    on_screen(browser, lambda: text_of(browser, "#status-text") == f"connected as {user}", 15, "connecting")


def row_of(database: str, exchange: str, symbol: str) -> str:
    return f"#board tr[data-token='{token_of(database, exchange, symbol)}']"


def test_names_with_spaces_search_and_numbers_are_labelled(browser, stack, make_token, database):
    connected_page(browser, stack, make_token, "names-user")

    fill(browser, "#search", "NSE:NIFTY 50")  # the README's own example: a symbol with a space
    click(browser, "#subscribe")
    nifty = row_of(database, "NSE", "NIFTY 50")
    on_screen(browser, lambda: text_of(browser, f"{nifty} td.name") == "NSE:NIFTY 50", 15, "NIFTY 50 on the board")
    assert text_of(browser, "#subscribe-error") == ""

    fill(browser, "#search", "NIFTY 50")  # words with a space are searched
    on_screen(browser, lambda: "NSE:NIFTY 50" in [
        e.text for e in browser.find_elements("css selector", "#results li .symbol")], 10, "search results")
    first = browser.find_element("css selector", "#results li")
    symbol, detail = (first.find_element("css selector", s) for s in (".symbol", ".detail"))
    gap = detail.rect["x"] - (symbol.rect["x"] + symbol.rect["width"])
    assert gap >= 8, f"symbol and description run together ({gap} px apart)"
    click(browser, "#results li")
    on_screen(browser, lambda: not browser.find_elements("css selector", "#results li"), 5,
              "the results to close after subscribing")

    tcs = token_of(database, "NSE", "TCS")
    fill(browser, "#search", str(tcs))  # by number: labelled with its symbol all the same
    click(browser, "#subscribe")
    on_screen(browser, lambda: text_of(browser, f"#board tr[data-token='{tcs}'] td.name") == "NSE:TCS", 10,
              "the token labelled with its symbol")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_refused_subscribe_shows_its_code(browser, stack, make_token):
    connected_page(browser, stack, make_token, "refused-user")

    fill(browser, "#search", "99999999999")  # beyond 32 bits: the server answers bad_request
    click(browser, "#subscribe")

    on_screen(browser, lambda: text_of(browser, "#subscribe-error").startswith("bad_request: "), 10,
              "the refusal's code")
    assert not [e for e in browser.get_log("browser") if "TypeError" in e["message"]]


def test_a_disconnected_board_is_stale_and_its_ages_keep_counting(browser, stack, make_token, database):
    connected_page(browser, stack, make_token, "stale-user")
    fill(browser, "#search", "NSE:INFY")
    click(browser, "#subscribe")
    row = row_of(database, "NSE", "INFY")
    on_screen(browser, lambda: text_of(browser, f"{row} td.age") not in ("", "–"), 15, "a first tick")
    assert text_of(browser, f"{row} td.state") == ""

    click(browser, "#disconnect")
    on_screen(browser, lambda: text_of(browser, f"{row} td.state") == "stale", 5, "the row marked stale")
    # The last tick was well under a second old; with no tick since, its age passes a second.
    on_screen(browser, lambda: text_of(browser, f"{row} td.age").endswith(" s"), 5, "the age to keep counting")


def test_upstream_and_entitlement_notices_show_on_the_board(browser, stack, make_token, database):
    connected_page(browser, stack, make_token, "notice-user")
    fill(browser, "#search", "NSE:INFY")
    click(browser, "#subscribe")
    row = row_of(database, "NSE", "INFY")
    token = token_of(database, "NSE", "INFY")
    on_screen(browser, lambda: text_of(browser, f"{row} td.age") not in ("", "–"), 15, "a first tick")

    # What the server sends (docs/API.md, Outages), sent to this page's connection through the
    # replicas' message queue, as a replica's own notices travel to it.
    emitter = SocketIO(message_queue=REDIS_URL, channel=keys.SOCKETIO_CHANNEL)
    sid = browser.find_element("css selector", "#status").get_attribute("data-connection")

    def shows_after(event: str, payload: dict, shown: str) -> None:
        # Sent again each second until seen: a message-queue publish is fire-and-forget, and the
        # simulator's next tick of a live token clears an outage mark (as real ticks would).
        polls = iter(range(1000))

        def shows() -> bool:
            if next(polls) % 50 == 0:
                emitter.emit(event, payload, to=sid, namespace="/")
            return text_of(browser, f"{row} td.state") == shown

        on_screen(browser, shows, 8, f"{shown!r} on the row", interval=0.02)

    shows_after("error", {"code": "upstream_unavailable", "reason": "token_expired", "message": "Kite refused",
                          "tokens": [token]}, "stale (token_expired)")
    shows_after("upstream_restored", {"tokens": [token]}, "")
    shows_after("unsubscribed", {"tokens": [token], "total": 0, "reason": "not_entitled"}, "not entitled")
    assert text_of(browser, "#subscribe-error") == ""  # notices go to the rows, not the request's error line


def test_the_search_placeholder_fits_its_box(browser, stack):
    browser.get(f"{stack['url']}/")
    fits = browser.execute_script("""
        const input = document.querySelector('#search');
        const style = getComputedStyle(input);
        const context = document.createElement('canvas').getContext('2d');
        context.font = `${style.fontSize} ${style.fontFamily}`;
        const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return [context.measureText(input.placeholder).width, room];""")
    assert fits[0] <= fits[1], f"the placeholder needs {fits[0]} px, the box has {fits[1]}"


def test_the_page_has_an_icon(stack):
    icon = requests.get(f"{stack['url']}/favicon.ico", timeout=5)

    assert icon.status_code == 200 and icon.headers["Content-Type"].startswith("image/")


MAX_AGE_SECS = 4  # MAX_CONNECTION_SECS of the replica that cuts every connection


def test_a_connection_the_server_cuts_comes_back_with_its_subscriptions(
        browser, stack, processes, service_env, workdir, make_token, database):
    # The server ends the connection (connection_max_age) without a Socket.IO disconnect: the
    # page's client says why, reconnects, resubscribes by name, and ticks resume on the same row.
    web = start_web(processes, service_env, workdir, "web-page-aged", MAX_CONNECTION_SECS=str(MAX_AGE_SECS))
    browser.get(f"http://127.0.0.1:{web.port}/")
    fill(browser, "#token", make_token("cut-user"))
    click(browser, "#connect")
    on_screen(browser, lambda: text_of(browser, "#status-text") == "connected as cut-user", 10, "connecting")
    first = browser.find_element("css selector", "#status").get_attribute("data-connection")
    fill(browser, "#search", "NSE:INFY")
    click(browser, "#subscribe")
    row = row_of(database, "NSE", "INFY")
    on_screen(browser, lambda: text_of(browser, f"{row} td.price") not in ("", "–"), 10, "a first price")

    statuses: set[str] = set()

    def back_on_a_new_connection() -> bool:
        statuses.add(text_of(browser, "#status-text"))
        connection = browser.find_element("css selector", "#status").get_attribute("data-connection")
        return connection not in (None, first) and text_of(browser, "#status-text") == "connected as cut-user"

    on_screen(browser, back_on_a_new_connection, MAX_AGE_SECS + 8, "a new connection", interval=0.05)
    assert "reconnecting (connection_max_age)" in statuses, statuses
    seq = int(browser.find_element("css selector", row).get_attribute("data-seq"))
    on_screen(browser, lambda: int(browser.find_element("css selector", row).get_attribute("data-seq")) > seq,
              10, "ticks on the resubscribed row")
    assert text_of(browser, f"{row} td.state") == "" and text_of(browser, f"{row} td.name") == "NSE:INFY"
    assert text_of(browser, "#subscribe-error") == ""
    assert len(browser.find_elements("css selector", "#board tbody tr:not(.depth)")) == 1
    click(browser, "#disconnect")
