"""The BUILT site as a reader sees it (HTML from ``mkdocs build``, not the markdown):
spec strings shown in code build pruners, tables keep their columns, and no markdown or
reST markup leaks into the rendered text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

import tokenprune

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
#: Pages readers copy spec strings from (the plugin page's names need its example plugin).
SPEC_PAGES = ("index.html", "quickstart", "concepts", "strategies", "models", "cli", "limitations")
#: ``name``, ``name(args)`` joined by at least one ``|``: how a pruner spec looks.
STAGE = r"[A-Za-z_]\w*(?:\([^()]*\))?"
PIPELINE = re.compile(rf"\s*{STAGE}(?:\s*\\?\|\s*{STAGE})+\s*")


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self, tag: str | None = None):
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter(tag)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(path: Path) -> Element:
    builder = _TreeBuilder()
    builder.feed(path.read_text())
    builder.close()
    return builder.root


def parse_fragment(markup: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(markup)
    return next(builder.root.iter("article"))


def content(path: Path) -> Element:
    """The page's article (what the page's markdown and docstrings render to)."""
    articles = [e for e in parse(path).iter("article") if "md-content__inner" in e.classes]
    assert len(articles) == 1, path
    return articles[0]


def pages(site: Path) -> list[Path]:
    found = sorted(p for p in site.rglob("index.html") if p.relative_to(site).parts[0] not in {"search", "assets"})
    assert len(found) >= 10
    return found


def spec_strings(article: Element) -> list[str]:
    """Spec strings shown on a page: inline code that looks like a pipeline, and string
    literals of that form inside code blocks (``pruner("...")``, ``--recipe "..."``)."""
    found = []
    for code in article.iter("code"):
        text = code.text()
        if "\n" not in text and PIPELINE.fullmatch(text):
            found.append(text.strip())
        literals = re.findall(r'"([^"\n]+)"', text) + re.findall(r"'([^'\n]+)'", text)
        found += [value for value in literals if PIPELINE.fullmatch(value)]
    return found


@pytest.fixture(scope="module")
def site(built_site) -> Path:
    return built_site


def test_every_spec_string_shown_builds_a_pruner(site):
    checked = 0
    for page in SPEC_PAGES:
        path = site / page if page.endswith(".html") else site / page / "index.html"
        for spec in spec_strings(content(path)):
            try:
                tokenprune.pruner(spec, keep=0.1)
            except tokenprune.TokenpruneError as exc:
                raise AssertionError(f"{page}: the spec string {spec!r} shown does not build: {exc}") from exc
            checked += 1
    assert checked >= 15, "the recipe table alone shows 12 spec strings"


def test_the_spec_check_sees_an_escaped_pipe():
    article = parse_fragment("<article class='md-content__inner'><code>attention \\| top_k</code></article>")
    assert spec_strings(article) == ["attention \\| top_k"]
    with pytest.raises(tokenprune.SpecError):
        tokenprune.pruner("attention \\| top_k", keep=0.1)


def test_every_table_row_has_the_columns_of_its_header(site):
    for path in pages(site):
        for table in content(path).iter("table"):
            header = [len(list(row.iter("th"))) for row in table.iter("tr") if list(row.iter("th"))]
            assert len(header) == 1, f"{path}: a table without exactly one header row"
            for row in table.iter("tr"):
                cells = list(row.iter("td"))
                if not cells:
                    continue
                texts = [c.text().strip() for c in cells]
                assert len(cells) == header[0], f"{path}: row {texts} has {len(cells)} cells, header {header[0]}"
                # Python-Markdown turns a line swallowed into a table (a paragraph with no
                # blank line before it) into a row whose cells after the first are empty.
                assert len(cells) == 1 or any(texts[1:]) or list(row.iter("img")), (
                    f"{path}: row {texts} has only its first cell (text swallowed into the table?)"
                )


LEFTOVERS = {
    "\\|": "an escaped pipe (markdown table escape shown as text)",
    "# doctest:": "a doctest directive",
    "::": "a reST literal-block marker",
    ">>>": "a doctest prompt outside a code block",
}


@pytest.mark.parametrize("marker", LEFTOVERS)
def test_no_markup_leftovers_in_rendered_text(site, marker):
    for path in pages(site):
        article = content(path)
        # Doctest examples render as code blocks; a prompt in running text is a leftover.
        text = "".join(_text_outside(article, {"pre"})) if marker == ">>>" else article.text()
        where = text.find(marker)
        assert where < 0, f"{path}: {LEFTOVERS[marker]}: ...{text[max(0, where - 80):where + 40]!r}"


def test_the_api_reference_documents_each_object_once(site):
    headings = [
        h.attrs["id"] for tag in ("h2", "h3", "h4", "h5") for h in content(site / "api" / "index.html").iter(tag)
        if h.attrs.get("id", "").startswith("tokenprune.")
    ]
    # Material suffixes repeated ids (_1, _2); a name documented twice shows up as one.
    names = [re.sub(r"_\d+$", "", h) for h in headings]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    assert {"tokenprune.pruner.pruner", "tokenprune.Pruner", "tokenprune.prune", "tokenprune.Layout"} <= set(names)


#: About 117 monospace characters fit in a code block at 1280 px (what test_browser.py
#: measures in Chromium); a few less leave room for font differences.
CODE_COLUMNS = 114


def test_code_lines_fit_the_page(site):
    for path in pages(site):
        for pre in content(path).iter("pre"):
            for line in pre.text().splitlines():
                assert len(line) <= CODE_COLUMNS, f"{path}: {len(line)} columns: {line!r}"


def test_every_picture_opens_at_full_size_on_a_click(site):
    pictures = 0
    for path in pages(site):
        article = content(path)
        images = [img.attrs["src"] for img in article.iter("img") if "img/" in img.attrs.get("src", "")]
        linked = [
            img.attrs["src"] for a in article.iter("a") for img in a.iter("img") if a.attrs.get("href") == img.attrs["src"]
        ]
        assert sorted(images) == sorted(linked), f"{path}: pictures without a link to themselves"
        pictures += len(images)
    assert pictures >= 20


#: How a library's docs do not speak: of its tracker's issue numbers or its own workshop.
INTERNAL = re.compile(r"\bissue #\d+|\b(?:this|the) project's\b", re.I)


def test_pages_speak_to_readers_not_of_the_project_s_own_work(site):
    for path in pages(site):
        text = content(path).text()
        found = INTERNAL.search(text)
        assert found is None, f"{path}: {text[max(0, found.start() - 80):found.end() + 40]!r}"


def _text_outside(element: Element, tags: set[str]):
    for child in element.children:
        if isinstance(child, str):
            yield child
        elif child.tag not in tags:
            yield from _text_outside(child, tags)


def test_returns_tables_show_a_type_not_a_sentence(site):
    # Google-style "Returns:" text with a colon is read as "type: description"; a
    # sentence in the Type column means the docstring needs rewording.
    article = content(site / "api" / "index.html")
    checked = 0
    for table in article.iter("table"):
        heads = [th.text().strip() for th in table.iter("th")]
        if heads[:2] != ["Type", "Description"]:
            continue
        for row in table.iter("tr"):
            cells = list(row.iter("td"))
            if cells:
                kind = cells[0].text().strip().replace(", ", ",").replace(" | ", "|")
                assert " " not in kind and "`" not in kind, f"Returns/Raises type {kind!r}"
                checked += 1
    assert checked >= 5
