"""Reading served HTML the way a browser would: its tags and where they point."""

from __future__ import annotations

import re
from html.parser import HTMLParser

URL_ATTRIBUTES = {"href", "src", "srcset", "action", "formaction", "poster", "data", "background"}


class Tags(HTMLParser):
    """Every tag of a page with its attributes, as a browser would read them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def external_references(page: str) -> list[str]:
    """URL attributes that point at another host (scheme:, //, \\\\) rather than this page
    or a path on this server."""
    return [
        value
        for _, attrs in Tags(page).tags
        for name, value in attrs.items()
        if name in URL_ATTRIBUTES and re.match(r"\s*([a-z][a-z0-9+.-]*:|//|\\\\)", value, re.I)
    ]
