"""lorakit.files.report: the HTML report writer escapes every text field but trusted ``Html``
blocks, tables align numbers, sparklines survive gaps and edge cases, and writing is atomic."""

from __future__ import annotations

import math

import pytest
from faults import case, raises

from lorakit.files.report import Html, KeyValues, Report, Sparkline, Table, Text

EVIL = '<script>alert("x")</script> & "quotes"'


def test_report_escapes_every_text_field(tmp_path):
    rep = Report(f"title {EVIL}", subtitle=f"sub {EVIL}", footer=f"foot {EVIL}")
    rep.add(f"section {EVIL}",
            KeyValues([(f"key {EVIL}", f"value {EVIL}")]),
            Table([f"head {EVIL}", "n"], [[f"cell {EVIL}", 3]], caption=f"cap {EVIL}"),
            Text(f"para {EVIL}\n\nsecond"), Text(f"pre {EVIL}", pre=True),
            Sparkline([3.0, 2.0, 1.0], label=f"spark {EVIL}"))
    html = rep.to_html()
    assert "<script" not in html and "alert(\"x\")" not in html
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;"
    for where in ("title", "sub", "foot", "section", "key", "value", "head", "cell", "cap",
                  "para", "pre", "spark"):
        assert f"{where} {escaped}" in html, where
    assert "<p>second</p>" in html
    path = rep.write(tmp_path / "r.html")
    assert path == (tmp_path / "r.html").resolve() and path.read_text("utf-8") == html
    assert not list(tmp_path.glob(".*.tmp"))         # the temporary file was renamed away


def test_report_html_block_is_trusted_and_sections_can_grow():
    rep = Report("r")
    section = rep.add("figures", Html('<div id="fig">plot</div>'))
    section.blocks.append(Table(["a"], [["<b>"]]))
    html = rep.to_html()
    assert '<div id="fig">plot</div>' in html        # a figure's markup goes in as it is
    assert "<td>&lt;b&gt;</td>" in html
    assert rep.section("figures") is section
    with pytest.raises(KeyError, match="figures"):
        rep.section("nope")


def test_table_alignment_and_sparkline_edge_cases():
    html = Table(["name", "n", "pct"], [["a", "1,024", "0.34%"], ["b", 7, "1%"]]).to_html()
    assert '<th>name</th><th class="num">n</th><th class="num">pct</th>' in html
    spark = Sparkline([None, 2.0, math.nan, 1.0, math.inf], x=[0, 1, 2, 3, 4])
    assert spark.points() == [(1.0, 2.0), (3.0, 1.0)]
    assert "<polyline" in spark.to_html() and "2 → 1" in spark.to_html()
    assert "<polyline" in Sparkline([5.0, 5.0]).to_html()           # flat line, no 0/0
    assert "<polyline" in Sparkline([5.0]).to_html()                # a single point
    assert "no data" in Sparkline([], label="empty").to_html()
    assert Sparkline([1.0, 0.0, -1.0], log=True).points() == [(0.0, 1.0)]
    with pytest.raises(ValueError, match="x has 1"):
        Sparkline([1.0, 2.0], x=[0]).points()


# -- bad input and faults: a clear error, nothing changed (docs/reliability.md) --------------------
@case("Report.write into an unwritable folder (/proc)", "PermissionError: cannot write the "
      "file '/proc/…'", "nothing written, no temp file named")
def test_report_write_unwritable():
    from lorakit.files.report import Report

    raises(PermissionError, "cannot write the file '/proc/lk.html'", Report("t").write,
           "/proc/lk.html")


@case("Report.write into a folder that does not exist", "FileNotFoundError: cannot write PATH: "
      "the folder … does not exist (create it first, e.g. os.makedirs(…))", "nothing created")
def test_report_write_missing_folder(tmp_path):
    raises(FileNotFoundError, "does not exist .create it first", Report("t").write,
           tmp_path / "nope" / "r.html")
    assert list(tmp_path.iterdir()) == []


@case("Report.write over an existing 0600 file", "none: replaced atomically",
      "the file's mode stays 0600")
def test_report_write_keeps_mode(tmp_path):
    f = tmp_path / "r.html"
    f.write_text("old")
    f.chmod(0o600)
    Report("t").write(f)
    assert (f.stat().st_mode & 0o777) == 0o600 and "<html" in f.read_text()
