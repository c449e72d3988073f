"""One self-contained HTML page: inline CSS, figures embedded as base64 PNG, no external assets.

>>> "data:image/png;base64," in image_tag(b"\\x89PNG", alt="x")
True
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #345;padding-bottom:.2em}h2{margin-top:1.8em;color:#345}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:center;white-space:nowrap}
thead th{border-bottom:2px solid #345;background:#f3f5f8}
tbody th{text-align:left}
table.plain td{text-align:left;white-space:normal}
span.ci{display:block;color:#666;font-size:.8em}
.scroll{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
.figures{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.figures figure.small{width:370px;margin:0}.figures figure.wide{width:100%;margin:0}
figcaption{font-size:.85em;color:#444;max-width:900px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.gallery figure{width:280px;margin:0}.gallery img{width:100%}
.gallery figcaption{font-size:.75em}
.bad{color:#a00}.note{color:#555;font-size:.9em}
nav a{margin-right:1em}
"""


@dataclass
class Section:
    anchor: str
    title: str
    body: str  # HTML fragment


def image_tag(png: bytes, *, alt: str, css_class: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    attr = f" class='{css_class}'" if css_class else ""
    return f"<img{attr} alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{data}'>"


def figure_block(png: bytes | Path, *, alt: str, caption: str, css_class: str = "") -> str:
    """``<figure>`` with an embedded PNG (bytes, or a file read now)."""
    data = png.read_bytes() if isinstance(png, Path) else png
    attr = f" class='{css_class}'" if css_class else ""
    return (
        f"<figure{attr}>{image_tag(data, alt=alt)}"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def paragraph(text: str, *, css_class: str = "note") -> str:
    return f"<p class='{css_class}'>{html.escape(text)}</p>"


def render_page(*, title: str, sections: list[Section], subtitle: str = "") -> str:
    """The whole page with a navigation bar over the sections."""
    nav = " ".join(f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in sections)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(paragraph(subtitle))
    parts.append(f"<nav>{nav}</nav>")
    for section in sections:
        parts.append(
            f"<section id='{section.anchor}'><h2>{html.escape(section.title)}</h2>"
            f"{section.body}</section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
