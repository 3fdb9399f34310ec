"""The report as data: sections of blocks, each block able to write itself as HTML and as
Markdown, so every sentence of the report is written once (docs/architecture.md).

Prose is Markdown-lite: `code`, **strong** and *emphasis* are the only marks; HTML output
escapes everything else. Figures are embedded in HTML as ``data:`` URIs (the file stands alone) and
linked by relative path in Markdown. :func:`place_after` puts each figure, and each table that
no section places, after the section or table its record names
(:mod:`glow_repro.analysis.figures`, :mod:`glow_repro.analysis.report_tables`).
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import pandas as pd

_CODE = re.compile(r"`([^`]+)`")
#: One pass over escaped prose: a code span (left as written inside), **strong**, *emphasis*.
_MARKS = re.compile(r"`([^`]+)`|\*\*([^*\s](?:[^*]*[^*\s])?)\*\*|(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
_TAGS = ("code", "strong", "em")


def code_spans(escaped: str) -> str:
    """Turn Markdown `code` in already-escaped HTML text into ``<code>`` elements."""
    return _CODE.sub(r"<code>\1</code>", escaped)


def _mark(match: re.Match) -> str:
    tag, inner = next((tag, inner) for tag, inner in zip(_TAGS, match.groups()) if inner is not None)
    return f"<{tag}>{inner}</{tag}>"


def inline_html(text: str) -> str:
    """One line of prose as HTML: escaped, with `code`, **strong** and *emphasis* marked up
    (marks inside a code span stay as written)."""
    return _MARKS.sub(_mark, html.escape(str(text)))


class Block(Protocol):
    def to_html(self) -> str: ...

    def to_markdown(self) -> str: ...


@dataclass
class Paragraphs:
    """Running text; ``note`` is the smaller explanatory kind, ``abstract`` the boxed summary."""

    texts: Sequence[str]
    style: Literal["plain", "note", "abstract"] = "plain"

    def to_html(self) -> str:
        css = ' class="note"' if self.style == "note" else ""
        body = "\n".join(f"<p{css}>{inline_html(text)}</p>" for text in self.texts)
        return f'<div class="abstract">\n{body}\n</div>' if self.style == "abstract" else body

    def to_markdown(self) -> str:
        return "\n\n".join(self.texts)


@dataclass
class Heading:
    text: str

    def to_html(self) -> str:
        return f"<h3>{inline_html(self.text)}</h3>"

    def to_markdown(self) -> str:
        return f"### {self.text}"


@dataclass
class Facts:
    """A few named values: a two-column table in HTML, a bullet list in Markdown."""

    items: dict[str, str]

    def to_html(self) -> str:
        rows = "\n".join(f"<tr><th>{inline_html(k)}</th><td>{inline_html(v)}</td></tr>" for k, v in self.items.items())
        return f'<table class="data">\n{rows}\n</table>'

    def to_markdown(self) -> str:
        return "\n".join(f"- **{key}**: {value}" for key, value in self.items.items())


@dataclass
class Files:
    """Files of the report folder beside a table (its CSV, its LaTeX): each a ``(path, link)``
    pair, ``link`` relative to the report. HTML carries each file as a ``data:`` download link
    (the page stands alone); Markdown links the relative path."""

    items: Sequence[tuple[Path, str]]

    def to_html(self) -> str:
        links = []
        for path, link in self.items:
            kind = mimetypes.guess_type(path.name)[0] or "text/plain"
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            links.append(f'<a href="data:{kind};base64,{data}" download="{html.escape(path.name)}">'
                         f"<code>{html.escape(link)}</code></a>")  # fmt: skip
        return f'<p class="note">Files: {" · ".join(links)}</p>'

    def to_markdown(self) -> str:
        return "Files: " + " · ".join(f"[`{link}`]({link})" for _, link in self.items)


@dataclass
class Table:
    """A display table; ``name`` is an anchor for figures; ``files`` are the files it was also
    written to, linked right below it."""

    name: str
    frame: pd.DataFrame
    files: Files | None = None
    after: str = ""
    """The section id or table name this table follows when its section does not place it
    (see :func:`place_after`)."""

    def to_html(self) -> str:
        table = code_spans(self.frame.to_html(index=False, escape=True, border=0, classes="data", na_rep=""))
        return table + (f"\n{self.files.to_html()}" if self.files else "")

    def to_markdown(self) -> str:
        if not len(self.frame):
            return "(none)"
        text = self.frame.astype(object).where(self.frame.notna(), "")
        table = text.to_markdown(index=False, disable_numparse=True)
        return table + (f"\n\n{self.files.to_markdown()}" if self.files else "")


@dataclass
class FigureFile:
    """A saved PNG shown with its caption; ``link`` is its path relative to the report."""

    name: str
    caption: str
    png: Path
    link: str
    after: str = ""
    """The section id or table name this figure follows (see :func:`place_after`)."""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png.read_bytes()).decode("ascii")

    def to_html(self, css: str = "") -> str:
        css = f' class="{css}"' if css else ""
        return (f'<figure id="fig-{self.name}"{css}><img src="{self.data_uri}" alt="{html.escape(self.name)}">'
                f"<figcaption>{inline_html(self.caption)}</figcaption></figure>")  # fmt: skip

    def to_markdown(self) -> str:
        return f"![{self.name}]({self.link})\n\n*{self.caption}*"


@dataclass
class SampleRows:
    """Sample images, one row per variant (temperature grid first)."""

    groups: Sequence[Sequence[FigureFile]]

    def to_html(self) -> str:
        rows = ("\n".join(f.to_html("sample") for f in group) for group in self.groups)
        return "\n".join(f'<div class="sample-row">\n{row}\n</div>' for row in rows)

    def to_markdown(self) -> str:
        return "\n\n".join(f.to_markdown() for group in self.groups for f in group)


@dataclass
class Code:
    text: str
    language: str = ""

    def to_html(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"

    def to_markdown(self) -> str:
        return f"```{self.language}\n{self.text.rstrip()}\n```"


@dataclass
class Fold:
    """Detail a reader opens on demand: ``<details>`` in HTML, a labelled paragraph in Markdown."""

    summary: str
    blocks: list[Block]
    open: bool = False

    def to_html(self) -> str:
        body = "\n".join(block.to_html() for block in self.blocks)
        return (
            f"<details{' open' if self.open else ''}><summary>{inline_html(self.summary)}</summary>\n{body}\n</details>"
        )

    def to_markdown(self) -> str:
        return "\n\n".join([f"{self.summary}:", *(block.to_markdown() for block in self.blocks)])


@dataclass
class Section:
    """A numbered section of the report; ``id`` is its HTML anchor."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def to_html(self, number: int) -> str:
        body = "\n".join(block.to_html() for block in self.blocks)
        return f'<section id="{self.id}">\n<h2>{number}. {inline_html(self.title)}</h2>\n{body}\n</section>'

    def to_markdown(self, number: int) -> str:
        return "\n\n".join([f"## {number}. {self.title}", *(block.to_markdown() for block in self.blocks)])


def place_after(sections: list[Section], placed: Iterable[FigureFile | Table]) -> None:
    """Insert each figure or table right after the block its ``after`` names: a section id
    puts it at the top of that section, a table name after that table; blocks sharing an
    anchor keep their order. An anchor that names nothing is an error listing the anchors
    there are."""
    placed = list(placed)
    anchors = {s.id for s in sections} | {b.name for s in sections for b in s.blocks if isinstance(b, Table)}
    for extra in placed:
        if extra.after not in anchors:
            kind = "table" if isinstance(extra, Table) else "figure"
            raise ValueError(
                f"{kind} {extra.name!r}: after={extra.after!r} is neither a section "
                f"nor a table of the report ({', '.join(sorted(anchors))})"
            )
    following = {anchor: [b for b in placed if b.after == anchor] for anchor in anchors}
    for section in sections:
        blocks: list[Block] = [*following[section.id]]
        for block in section.blocks:
            blocks.append(block)
            if isinstance(block, Table):
                blocks += following[block.name]
        section.blocks = blocks
