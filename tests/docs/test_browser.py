"""The built site in a real browser (headless Chromium at 1280 px): every page loads with
no broken image, link or anchor and no console error, and no code block, table or page
is wider than its box (``scrollWidth`` against ``clientWidth``). Pages are checked as a
reader first sees them: a collapsed block (``<details>``, e.g. a benchmark's all-columns
table) stays closed, so what it holds may scroll once opened.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; run it
with ``nox -s browser`` (the default test run deselects the ``browser`` marker).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1280, 900
#: Chromium flags for a closed network and a fresh profile (no background connections).
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
)

#: What one page reports: its images that did not load, its links, the ids it defines,
#: and the scroll boxes (code blocks, table wrappers, the page) wider than they show.
PAGE_REPORT = """
const describe = (el) => (el.tagName + '.' + el.className + ': '
    + el.textContent.trim().replace(/\\s+/g, ' ').slice(0, 70));
const boxes = [...document.querySelectorAll(
    'article pre > code, article .md-typeset__scrollwrap, article .md-typeset__table, article table')];
boxes.push(document.scrollingElement);
return {
  width: window.innerWidth,
  broken_images: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
      .map(i => i.getAttribute('src')),
  images: document.images.length,
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  // checkVisibility: false inside a closed <details> (its content is not rendered)
  overflowing: boxes.filter(el => el.checkVisibility() && el.scrollWidth > el.clientWidth + 1)
      .map(el => [describe(el), el.scrollWidth, el.clientWidth]),
  boxes: boxes.length,
};
"""


@pytest.fixture(scope="module")
def server(built_site):
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the test reports failures itself
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _page_urls(site: Path, root: str) -> list[str]:
    pages = [p.relative_to(site).parent.as_posix() for p in site.rglob("index.html")]
    return sorted(root + ("" if p == "." else p + "/") for p in pages if not p.startswith(("search", "assets")))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_page_renders_whole_at_1280px(built_site, server, browser):
    urls = _page_urls(built_site, server)
    assert len(urls) >= 10
    reports, problems = {}, []
    for url in urls:
        browser.get(url)
        report = browser.execute_script(PAGE_REPORT)
        reports[url] = report
        where = url.removeprefix(server) or "home"
        assert report["width"] == WIDTH, f"{where}: viewport {report['width']} px, expected {WIDTH}"
        problems += [f"{where}: broken image {src}" for src in report["broken_images"]]
        problems += [
            f"{where}: {text!r} is {scroll} px wide in a {client} px box"
            for text, scroll, client in report["overflowing"]
        ]
        problems += [
            f"{where}: console {entry['level']}: {entry['message'][:200]}"
            for entry in browser.get_log("browser")
            if entry["level"] == "SEVERE"
        ]

    ids = {urldefrag(url).url: set(report["ids"]) for url, report in reports.items()}
    checked: dict[str, int] = {}
    for url, report in reports.items():
        where = url.removeprefix(server) or "home"
        for link in report["links"]:
            target, anchor = urldefrag(link)
            if urlparse(link).netloc != urlparse(server).netloc:
                continue  # an external site: this machine may have no network
            if target not in ids:
                if target not in checked:
                    checked[target] = _status(target)
                if checked[target] != 200:
                    problems.append(f"{where}: link {link} answers {checked[target]}")
            elif anchor and anchor not in ids[target]:
                problems.append(f"{where}: link {link} names an anchor the page lacks")
    assert not problems, "\n".join(problems)
    assert sum(r["images"] for r in reports.values()) >= 20
    assert sum(r["boxes"] for r in reports.values()) >= 50
