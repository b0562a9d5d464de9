"""Print the book to one PDF with headless Chromium: ``make pdf`` runs it.

    python book/_ext/print_pdf.py _build/singlehtml _build/html/prenorm.pdf

Why Chromium and not LaTeX: the PDF must show what the site shows, from the same
executed notebooks, and the site's key outputs are HTML (the claims ledger on the
landing page, pandas tables, verdict colours). Sphinx's LaTeX builder cannot render an
HTML output (it falls back to the text ``<IPython.core.display.HTML object>``), and
Debian's TeX packages for it (texlive-latex-extra, -xetex, latexmk and fonts) are about
250 MB to download in CI. The Chromium that the browser test already drives
(tests/test_browser.py) costs nothing more, and prints the page with MathJax's output,
the figures and the tables exactly as a reader sees them. Jupyter Book's own HTML-to-PDF
route (``--builder pdfhtml``) would download a browser of its own (pyppeteer), which
machines without network access cannot.

The input is the book built with Sphinx's ``singlehtml`` builder (every page in one
document, from the same execution cache as the site, so nothing is re-executed). This
script serves it on localhost, opens it in headless Chromium over the DevTools protocol
(``websocket-client``), waits until MathJax has typeset every formula, the fonts are
loaded and every image has loaded, fails if any formula is left untypeset or any image
is broken, adds print styling (no sidebars or buttons, each chapter on a new page, code
wrapped to the page), points the ledger's links at the sections inside the document,
and prints with page numbers and an outline of the headings.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

# Print styling injected before printing: the site's navigation and the cells it hides
# (bootstrap, setup; MyST-NB's collapsed details) go; code and tables
# wrap or shrink to the page; each top-level document (a chapter) starts a new page.
PRINT_CSS = """
@page { size: A4; margin: 16mm 14mm 18mm 14mm; }
html { font-size: 10.5pt; }
.bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .bd-header-article,
.header-article, .prev-next-area, .bd-footer, .bd-footer-content, .footer-article,
.headerlink, .toggle-button, .cell_input .copybtn, .copybtn, #pst-back-to-top,
.bd-search, .search-button-field, .skip-link, .extra_footer, .theme-switch-button,
.dropdown-launch-buttons, .article-header-buttons, .pdf-edition,
details.hide { display: none !important; }
.bd-main, .bd-content, .bd-article-container, .bd-article, .bd-page-width, .bd-container,
.bd-container__inner { max-width: none !important; width: auto !important;
  padding: 0 !important; margin: 0 !important; display: block !important; }
pre, .highlight pre { white-space: pre-wrap !important; word-break: break-word; font-size: 8.5pt; }
.cell_output, .output { overflow: visible !important; max-height: none !important; }
table { font-size: 8.5pt; page-break-inside: auto; }
tr, img, figure, mjx-container[display="true"] { page-break-inside: avoid; }
img { max-width: 100% !important; height: auto !important; }
h1, h2, h3 { page-break-after: avoid; }
.prenorm-document { page-break-before: always; }
.prenorm-document:first-of-type { page-break-before: auto; }
.prenorm-chapter-number { display: block; font-size: 0.6em; color: #555; }
"""

# Runs in the page before printing. Returns what the caller checks.
PREPARE = """(async () => {
  if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise)
    return {error: 'MathJax did not load'};
  await MathJax.startup.promise;
  await document.fonts.ready;
  await Promise.all([...document.images].map(img => img.complete ? null :
    new Promise(r => { img.onload = img.onerror = r; })));
  const style = document.createElement('style');
  style.textContent = %s;
  document.head.appendChild(style);
  // Each document of the single page (Sphinx: a <span id="document-..."> before its section)
  // starts a new page; chapter titles carry their number.
  const chapters = %s;
  for (const anchor of document.querySelectorAll('span[id^="document-"]')) {
    const doc = anchor.id.slice('document-'.length);
    const section = anchor.nextElementSibling;
    if (!section) continue;
    section.classList.add('prenorm-document');
    const h1 = section.querySelector('h1, h2');  // singlehtml nests each document: h2
    if (h1 && chapters[doc] && !h1.querySelector('.section-number')) {
      const n = document.createElement('span');
      n.className = 'prenorm-chapter-number';
      n.textContent = 'Chapter ' + chapters[doc];
      h1.prepend(n);
    }
  }
  // Links written as raw HTML (the ledger's "ch. N" links) name the page file of the
  // multi-page site; inside the single document they become links to the section.
  let relinked = 0;
  for (const a of document.querySelectorAll('a[href*=".html#"]')) {
    const url = new URL(a.getAttribute('href'), location.href);
    if (url.origin !== location.origin) continue;
    const id = decodeURIComponent(url.hash.slice(1));
    if (document.getElementById(id)) { a.setAttribute('href', '#' + id); relinked++; }
  }
  const math = [...document.querySelectorAll('.math')];
  return {
    math: math.length,
    untypeset: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60)),
    broken: [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src),
    relinked,
  };
})()"""

FOOTER = (
    '<div style="font-size:8px;width:100%;text-align:center;color:#555">'
    '<span class="pageNumber"></span> / <span class="totalPages"></span></div>'
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def chromium() -> str:
    """The Chromium binary: ``$CHROMIUM``, else ``chromium``, ``chromium-browser`` or
    ``google-chrome`` on the PATH."""
    exe = os.environ.get("CHROMIUM") or next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    if exe is None:
        sys.exit("make pdf needs Chromium: apt-get install chromium (or set CHROMIUM)")
    return exe


class _Page:
    """A DevTools-protocol connection to one page: commands, and the events seen."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=300, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))


def chapter_numbers(root: Path) -> dict[str, int]:
    """Docname to chapter number, in table-of-contents order, for the chapters (the
    ``book/NN_*`` notebooks)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
    chapters = [f for f in files if Path(f).name[:2].isdigit()]
    return {f: i + 1 for i, f in enumerate(chapters)}


def print_pdf(
    site: Path, out: Path, root: Path, page_name: str | None = None, timeout: float = 300.0
) -> dict:
    """Print ``site/<page_name>`` to ``out``; returns the page's checks (formula count,
    relinked ledger links). By default the page is the root document of a ``singlehtml``
    build (``_toc.yml``'s ``root``, e.g. ``book/intro.html``), which holds the whole book."""
    if page_name is None:
        import yaml

        page_name = yaml.safe_load((root / "_toc.yml").read_text())["root"] + ".html"
    if not (site / page_name).is_file():
        raise FileNotFoundError(f"{site / page_name} is missing: build with --builder singlehtml")
    # Sphinx's singlehtml writes the book into the root document's file (book/intro.html)
    # with links relative to the build's root (_static/, _images/): serve it from the root.
    page_file = site / page_name

    class _Root(_Quiet):
        def translate_path(self, path: str) -> str:
            if path.split("?")[0] == "/book.html":
                return str(page_file)
            return super().translate_path(path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Root, directory=str(site))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = Path(tempfile.mkdtemp(prefix="prenorm-pdf-"))
    proc = subprocess.Popen(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        browser = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        req = urllib.request.Request(f"{browser}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as resp:
            target = json.loads(resp.read())
        page = _Page(target["webSocketDebuggerUrl"])
        page.send("Page.enable")
        page.send("Emulation.setEmulatedMedia", media="print")
        url = f"http://127.0.0.1:{server.server_address[1]}/book.html"
        page.send("Page.navigate", url=url)
        page.wait_for("Page.loadEventFired", timeout)
        script = PREPARE % (json.dumps(PRINT_CSS), json.dumps(chapter_numbers(root)))
        out_eval = page.send(
            "Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in out_eval:
            raise RuntimeError(f"preparing the page failed: {out_eval['exceptionDetails']}")
        checks = out_eval["result"]["value"]
        if checks.get("error") or checks["untypeset"] or checks["broken"] or not checks["math"]:
            raise RuntimeError(f"the page is not ready to print: {checks}")
        pdf = page.send(
            "Page.printToPDF",
            printBackground=True,
            preferCSSPageSize=True,
            displayHeaderFooter=True,
            headerTemplate="<span></span>",
            footerTemplate=FOOTER,
            generateDocumentOutline=True,
            generateTaggedPDF=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(pdf["data"]))
        page.ws.close()
        return checks
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the singlehtml build (_build/singlehtml)")
    ap.add_argument("out", type=Path, help="the PDF to write")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    a = ap.parse_args()
    t = time.monotonic()
    checks = print_pdf(a.site, a.out, a.root)
    print(
        f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB, {checks['math']} formulas typeset, "
        f"{checks['relinked']} ledger links made internal) in {time.monotonic() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
