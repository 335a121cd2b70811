"""``report.html``: one self-contained page of an evaluation (tables, and the figures inlined as PNG data
URIs), readable offline and sendable by mail. Nothing is fetched: no stylesheet, font or script from
elsewhere. A few lines of inline script count the figures the browser decoded, so a reader (or a test
in a headless browser) sees at once whether every image loaded.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #666; }
"""

_COUNT_IMAGES = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img");
  var loaded = Array.prototype.filter.call(images, function (i) { return i.complete && i.naturalWidth > 0; });
  var status = document.getElementById("images-status");
  status.textContent = loaded.length + " of " + images.length + " figures loaded";
  status.setAttribute("data-loaded", String(loaded.length));
  status.setAttribute("data-total", String(images.length));
});
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_report(path: Path, *, title: str, facts: Mapping[str, Any], sections: Sequence[tuple[str, str]],
                 figures: Sequence[tuple[str, Path]]) -> Path:
    """The page: a title, facts (key, value), sections (heading, HTML of its tables) and the figures
    (caption, PNG file), each PNG inlined."""
    parts = [f"<h1>{html.escape(title)}</h1>",
             table(["", ""], [(k, v) for k, v in facts.items()], "facts")]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{content}")
    parts.append('<h2>Figures</h2><p class="note" id="images-status">figures not counted yet (scripts off)</p>')
    for caption, png in figures:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style><script>{_COUNT_IMAGES}</script></head><body>{''.join(parts)}</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["table", "write_report"]
