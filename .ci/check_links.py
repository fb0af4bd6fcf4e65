"""Check every link of the built documentation site (``make docs`` writes it to ``site/``).

Usage: ``python .ci/check_links.py [SITE_DIR]``. For every ``href`` / ``src`` of every HTML page:
a relative link must name a file of the site, and its ``#fragment`` an ``id`` (or ``name``) in
that file. External links (``http(s)://``, ``mailto:``) are counted, not fetched (the check runs
offline). Prints one line per broken link and a summary; exits 1 if any link is broken.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key in ("id", "name") and (key == "id" or tag == "a"):
                self.ids.add(value)
            if (key == "href" and tag in ("a", "link")) or (key == "src" and tag in ("img", "script", "iframe", "source")):
                self.links.append(value)


def _parse(path: Path, cache: dict[Path, _Page]) -> _Page:
    if path not in cache:
        page = _Page()
        page.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = page
    return cache[path]


def check_site(site: Path) -> tuple[list[str], int, int]:
    """Broken links (``"page: link (why)"``), the number of internal links checked, and of external ones."""
    site = site.resolve()
    cache: dict[Path, _Page] = {}
    broken: list[str] = []
    internal = external = 0
    for html in sorted(site.rglob("*.html")):
        for link in _parse(html, cache).links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//"):
                external += parts.scheme in ("http", "https") or link.startswith("//")
                continue
            internal += 1
            if parts.path.startswith("/"):  # root-relative (404.html): against the site's root
                target = (site / unquote(parts.path).lstrip("/")).resolve()
            elif parts.path:
                target = (html.parent / unquote(parts.path)).resolve()
                if target.is_dir():
                    target = target / "index.html"
            else:
                target = html
            where = f"{html.relative_to(site)}: {link}"
            if site != target and site not in target.parents:
                broken.append(f"{where} (outside the site)")
            elif not target.is_file():
                broken.append(f"{where} (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _parse(target, cache).ids:
                broken.append(f"{where} (no id {parts.fragment!r} in {target.relative_to(site)})")
    return broken, internal, external


def main(argv: list[str]) -> int:
    site = Path(argv[0] if argv else "site")
    if not (site / "index.html").is_file():
        print(f"check_links: {site}/index.html not found: build the site first (make docs)", file=sys.stderr)
        return 2
    broken, internal, external = check_site(site)
    for line in broken:
        print(f"broken link: {line}")
    pages = len(list(site.rglob("*.html")))
    print(f"check_links: {pages} pages, {internal} internal links checked, {len(broken)} broken; {external} external links not fetched (offline)")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
