"""The built site, as a reader's browser shows it, with no network.

The site built once per session (conftest.py's ``built_book``, at the ``ci`` scale) is
served on localhost and every page of the table of contents is opened in headless
Chromium (Debian's ``chromium`` package), driven over the DevTools protocol with
``websocket-client`` (the test extra). Each page must load; its math must be typeset by
MathJax (no raw ``$$``, ``\\(`` or ``\\frac`` left in the visible text outside code);
every image must load; a chapter's launch button must open that chapter's notebook; and
the console must show no error. Every request must stay on localhost: MathJax and the
widget manager come from ``_vendor/`` (see _config.yml), never from a CDN.

A screenshot of each chapter (the full page) is saved under
``_build/test-artifacts/screenshots/`` (``PRENORM_ARTIFACTS`` moves it). Chromium: `make
test` installs it with apt-get when it is missing and it runs as root; otherwise
``apt-get install chromium`` (or set ``CHROMIUM`` to a Chrome or Chromium binary).
"""

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
ARTIFACTS = Path(os.environ.get("PRENORM_ARTIFACTS", ROOT / "_build" / "test-artifacts"))

pytestmark = pytest.mark.browser

# What the page shows a reader, outside code: the text of <main> without code blocks,
# scripts and MathJax's own output.
VISIBLE_TEXT = """(() => {
  const root = (document.querySelector('main') || document.body).cloneNode(true);
  root.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight')
      .forEach(e => e.remove());
  return root.textContent;
})()"""
STATE = """(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const math = [...document.querySelectorAll('.math')];
  return {
    math: math.length,
    untypeset: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60)),
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    colab: [...document.querySelectorAll('a[href*="colab.research.google.com"]')].map(a => a.href),
    height: document.documentElement.scrollHeight,
    title: document.title,
  };
})()"""


def _toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        pages += [c["file"] for c in part["chapters"]]
    return pages


def _chromium() -> str:
    exe = os.environ.get("CHROMIUM") or next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    if exe is None:
        pytest.fail(
            "no Chromium: `apt-get install chromium` (make test does it as root), or set CHROMIUM"
        )
    return exe


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(built_book):
    html, _ = built_book
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class DevTools:
    """A minimal DevTools-protocol client for one page: commands, and the events seen."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client, in the test extra

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def evaluate(self, expression: str):
        out = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in out:
            raise RuntimeError(out["exceptionDetails"])
        return out["result"].get("value")

    def wait_until_quiet(self, timeout: float = 30.0, quiet: float = 0.7) -> None:
        """Until no request has been pending for ``quiet`` seconds (or ``timeout``)."""
        pending: set[str] = set()
        seen = 0
        deadline = time.monotonic() + timeout
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            self.ws.settimeout(0.1)
            try:
                self.events.append(json.loads(self.ws.recv()))
            except Exception:  # noqa: BLE001 - a timeout: nothing new
                pass
            finally:
                self.ws.settimeout(60)
            for ev in self.events[seen:]:
                m, p = ev.get("method"), ev.get("params", {})
                if m == "Network.requestWillBeSent":
                    pending.add(p["requestId"])
                elif m in ("Network.loadingFinished", "Network.loadingFailed"):
                    pending.discard(p["requestId"])
                else:
                    continue
                last_change = time.monotonic()
            seen = len(self.events)
            loaded = any(e.get("method") == "Page.loadEventFired" for e in self.events)
            if loaded and not pending and time.monotonic() - last_change > quiet:
                return

    def close(self):
        self.ws.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium")
    proc = subprocess.Popen(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--force-device-scale-factor=1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, "chromium exited at start"
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        time.sleep(0.2)
    port = port_file.read_text().split()[0]
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _open(browser: str, url: str) -> tuple[DevTools, dict]:
    req = urllib.request.Request(f"{browser}/json/new?about:blank", method="PUT")
    target = json.loads(urllib.request.urlopen(req, timeout=30).read())
    page = DevTools(target["webSocketDebuggerUrl"])
    page.target = target["id"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        page.send(f"{domain}.enable")
    page.send(
        "Emulation.setDeviceMetricsOverride",
        width=1300,
        height=900,
        deviceScaleFactor=1,
        mobile=False,
    )
    page.send("Page.navigate", url=url)
    page.wait_until_quiet()
    state = page.evaluate(STATE)
    page.wait_until_quiet(timeout=10)  # anything MathJax or the widgets fetched on demand
    return page, state


def _problems(events: list[dict]) -> tuple[list[str], list[str], dict[str, int]]:
    """(console errors, off-localhost requests, HTTP status per document URL)."""
    errors, remote, status = [], [], {}
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(
                f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
            )
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            errors.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
            )
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            if p["entry"].get("url", "").endswith("/favicon.ico"):
                continue  # the browser's own guess; the site declares no icon
            errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            errors.append(f"request failed: {p.get('errorText')}")
        elif m == "Network.requestWillBeSent":
            url = urlparse(p["request"]["url"])
            if url.scheme not in ("data", "blob", "about") and url.hostname not in (
                "127.0.0.1",
                "localhost",
            ):
                remote.append(p["request"]["url"])
        elif m == "Network.responseReceived" and p.get("type") == "Document":
            status[p["response"]["url"]] = p["response"]["status"]
    return errors, remote, status


def _screenshot(page: DevTools, height: int, out: Path) -> None:
    height = min(max(height, 900), 16000)
    page.send(
        "Emulation.setDeviceMetricsOverride",
        width=1300,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    page.wait_until_quiet(timeout=5, quiet=0.3)
    shot = page.send("Page.captureScreenshot", format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


@pytest.mark.parametrize("page_name", _toc_pages())
def test_page_renders_offline_in_chromium(site, browser, page_name):
    url = f"{site}/{page_name}.html"
    page, state = _open(browser, url)
    try:
        errors, remote, status = _problems(page.events)
        assert status.get(url) == 200, f"{url}: {status}"
        assert not remote, f"requests left localhost (a CDN?): {remote}"
        assert not errors, f"console errors on {page_name}: {errors}"
        assert not state["untypeset"], f"math not typeset: {state['untypeset'][:5]}"
        text = page.evaluate(VISIBLE_TEXT)
        raw = [m for m in ("$$", "\\(", "\\frac", "\\[") if m in text]
        assert not raw, f"raw TeX in the visible text of {page_name}: {raw}: " + ", ".join(
            repr(text[max(0, i - 60) : i + 60]) for i in (text.find(m) for m in raw)
        )
        broken = [i["src"] for i in state["images"] if not i["ok"]]
        assert not broken, f"images that did not load: {broken}"
        stem = Path(page_name).name
        if re.match(r"\d\d_", stem):
            assert sum(i["ok"] and "_images/" in i["src"] for i in state["images"]) >= 1, (
                "no figure"
            )
            cells = json.loads((ROOT / "book" / f"{stem}.ipynb").read_text())["cells"]
            if any("$" in "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"):
                assert state["math"] > 0, "the chapter's source has math, the page typeset none"
            repo = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
            org_repo = urlparse(repo["url"]).path.strip("/")
            expected = f"https://colab.research.google.com/github/{org_repo}/blob/{repo['branch']}/book/{stem}.ipynb"
            assert set(state["colab"]) == {expected}, state["colab"]
            _screenshot(page, state["height"], ARTIFACTS / "screenshots" / f"{stem}.png")
    finally:
        page.close()
        urllib.request.urlopen(f"{browser}/json/close/{page.target}", timeout=10).read()


def test_landing_page_links_to_the_pdf_edition(site, browser, built_pdf):
    # The site's link to the PDF edition (conftest.py's built_pdf puts it where `make pdf`
    # does) resolves, in the browser, to the PDF itself.
    page, _ = _open(browser, f"{site}/book/intro.html")
    try:
        found = page.evaluate(
            """(async () => Promise.all([...document.querySelectorAll('a.pdf-edition-link')]
                .map(async a => {
                  const r = await fetch(a.href);
                  const head = new Uint8Array(await r.arrayBuffer()).slice(0, 5);
                  return {href: a.href, status: r.status, type: r.headers.get('content-type'),
                          magic: String.fromCharCode(...head)};
                })))()"""
        )
    finally:
        page.close()
        urllib.request.urlopen(f"{browser}/json/close/{page.target}", timeout=10).read()
    assert len(found) == 1, f"the landing page should link the PDF once: {found}"
    (link,) = found
    assert link["href"] == f"{site}/prenorm.pdf", link
    assert link["status"] == 200 and link["type"] == "application/pdf", link
    assert link["magic"] == "%PDF-", link
