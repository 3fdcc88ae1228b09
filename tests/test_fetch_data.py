"""bench/data.py: the Wikipedia dump reader and markup cleaner, and idempotent derived files."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

from bench.data import calib_text, clean_wiki, enwiki_text, iter_pages, strip_nested, write_derived

ARTICLE = """{{Short description|Test article}}
{{Infobox thing|name=Thing|image=[[File:X.png|thumb|a {{nested}} caption]]}}
'''Thing''' is a [[test object|test]] used in [[Software testing]].<ref name="a">Cited [http://x.org site]</ref> It has
a [http://example.org/page long history] and &nbsp;spaces.<!-- hidden note --> Also <math>x^2</math>formula.

== History ==
* First item with [[Link]]s
# Numbered item
{| class="wikitable"
|-
| cell || other cell
|}
[[File:Thing.jpg|thumb|right|A [[picture]] of a thing]]
[[Category:Things]]
[[de:Ding]]

== See also ==
* [[Other thing]]

=== Sub of see also ===
Still skipped.

== Legacy ==
Text after the skipped section is kept.<ref>Only a citation</ref>
"""


def test_clean_wiki_keeps_prose_and_drops_markup() -> None:
    lines = clean_wiki(ARTICLE).splitlines()
    assert lines[0] == "Thing is a test used in Software testing. It has"
    assert lines[1] == "a long history and spaces. Also formula."
    assert lines[2:6] == ["== History ==", "First item with Links", "Numbered item", "== Legacy =="]
    assert lines[6:] == ["Text after the skipped section is kept."]


def test_strip_nested_handles_nesting_and_keep() -> None:
    assert strip_nested("a{{b{{c}}d}}e{{f}}g", "{{", "}}") == "aeg"
    assert strip_nested("x[[a|[[b]] c]]y", "[[", "]]", keep=lambda s: s.upper()) == "xA|[[B]] Cy"


def write_dump(path: Path, pages: list[tuple[str, str, str]]) -> None:
    body = "".join(
        f"<page><title>{t}</title><ns>{ns}</ns><revision><text>{text}</text></revision></page>"
        for t, ns, text in pages
    )
    xml = f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">{body}</mediawiki>'
    path.write_bytes(bz2.compress(xml.encode()))


def test_dump_reading_skips_redirects_other_namespaces_and_stubs(tmp_path: Path) -> None:
    words = " ".join(["word"] * 60)
    write_dump(
        tmp_path / "dump.xml.bz2",
        [
            ("Kept", "0", f"'''Kept''' {words} &amp;amp; more"),
            ("Moved", "0", "#REDIRECT [[Kept]]"),
            ("Talk:Kept", "1", words),
            ("Stub", "0", "Too short."),
        ],
    )
    assert [t for t, _, _ in iter_pages(tmp_path / "dump.xml.bz2")] == [
        "Kept",
        "Moved",
        "Talk:Kept",
        "Stub",
    ]
    text = enwiki_text(tmp_path / "dump.xml.bz2")
    assert text == f"= Kept =\nKept {words} & more\n"


def test_write_derived_is_idempotent_and_notices_changes(tmp_path: Path) -> None:
    source = tmp_path / "src.json"
    source.write_text(
        json.dumps(
            {"A": {"extract": "First  lead.\n"}, "B": {"extract": ""}, "C": {"extract": "Second."}}
        )
    )
    target = tmp_path / "out.txt"
    calls: list[Path] = []

    def make(path: Path) -> str:
        calls.append(path)
        return calib_text(path)

    write_derived(target, source, make, "v1")
    assert target.read_text() == "First lead.\n\nSecond.\n"
    write_derived(target, source, make, "v1")
    assert len(calls) == 1  # up to date: not rebuilt
    write_derived(target, source, make, "v2")
    assert len(calls) == 2  # recipe changed
    target.write_text("tampered")
    write_derived(target, source, make, "v2")
    assert len(calls) == 3 and target.read_text() == "First lead.\n\nSecond.\n"
    meta = json.loads((tmp_path / "out.txt.meta.json").read_text())
    assert meta["size"] == target.stat().st_size and meta["recipe"] == "v2"
