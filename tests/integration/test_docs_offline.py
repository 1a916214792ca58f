"""`/docs` with no internet: the page and every asset it references come from the app itself
(Swagger UI from the pinned `flask-swagger-ui` package), and nothing points anywhere else."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from tests.support import ROOT


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_and_every_asset_it_references_come_from_the_app_itself(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    refs = _References()
    refs.feed(html)
    assert len(refs.urls) >= 3, refs.urls
    assert not re.search(r"(https?:)?//", html), "the page names a URL outside the app"
    pinned = re.search(r"^flask-swagger-ui==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned, "the Swagger UI assets come from a pinned package"
    expected = {".js": "javascript", ".css": "text/css"}
    for url in refs.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert f"/{pinned.group(1)}/" in url, url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert expected[Path(url).suffix] in asset.mimetype, (url, asset.mimetype)
        assert len(asset.data) > 1000
        asset.close()
    assert "SwaggerUIBundle" in client.get(next(u for u in refs.urls if u.endswith("bundle.js"))).get_data(as_text=True)
    spec_url = re.search(r'url: "([^"]+)"', html).group(1)
    assert spec_url == "/openapi.json" and client.get(spec_url).json["info"]["title"] == "aiintegration"
    assert '"validatorUrl": null' in html  # Swagger UI would otherwise send the spec URL to a validator
    assert client.get(refs.urls[0].rsplit("/", 1)[0] + "/package.json").status_code == 404
