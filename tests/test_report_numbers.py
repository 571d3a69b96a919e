"""Both HTML reports print their numbers to at most 3 significant digits (one formatter:
datacheck.io.fmt_num), so a reader is never handed "3.961 s" or "0.6946" beside "0.439"."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import datacheck
from datacheck.io import fmt_num
from reports.cli import main as reports_main
from test_study_browser import make_study

# A decimal number standing alone: not part of a version (2.14.1), a file name or an id.
_DECIMAL = re.compile(r"(?<![\w.:/-])\d[\d,]*\.\d+(?![\w.])")


class _Text(HTMLParser):
    """Visible text, SVG labels included; style and script bodies left out."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    HIDDEN = ("style", "script", "title")

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def significant_digits(number: str) -> int:
    digits = number.replace(",", "").replace(".", "").lstrip("0")
    return len(digits) if "." in number else 0


def long_numbers(html: str) -> list[str]:
    p = _Text()
    p.feed(html)
    text = " ".join(p.parts)
    return [m.group(0) for m in _DECIMAL.finditer(text) if significant_digits(m.group(0)) > 3]


@pytest.mark.parametrize("value, shown", [
    (0.0014123, "0.00141"), (3.9614, "3.96"), (0.6946, "0.695"), (25.0, "25"), (1884.99, "1,885"),
    (123.456, "123"), (1797, "1,797"), (float("nan"), "n/a"), (None, "n/a"), (True, "true"), (-0.04214, "-0.0421"),
])
def test_fmt_num(value, shown) -> None:
    assert fmt_num(value) == shown


def test_the_checker_sees_long_numbers() -> None:
    assert long_numbers("<p>14 checks in 3.961 s, torch 2.14.1, a.png 0.439</p>") == ["3.961"]
    assert long_numbers("<svg><text>28.74</text></svg><style>.a{width:12.345px}</style>") == ["28.74"]


def test_audit_report_numbers_have_at_most_three_significant_digits(tmp_path: Path) -> None:
    datacheck.audit("digits", out=tmp_path / "audit")
    assert long_numbers((tmp_path / "audit" / "report.html").read_text()) == []


def test_study_report_numbers_have_at_most_three_significant_digits(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    assert reports_main(["render", str(study)]) == 0
    assert long_numbers((study / "report.html").read_text()) == []


@pytest.mark.parametrize("mean, std, shown", [
    (0.897, 0.00141, "0.897 ± 0.001"), (64.6, 3.11, "64.6 ± 3.1"), (128.0, 22.6, "128 ± 23"),
    (-0.377, 1.578, "-0.4 ± 1.6"), (0.039, 0.0099, "0.0390 ± 0.0099"), (1.0, 0.0, "1.00 ± 0.00"),
    (1884.9, 75.3, "1,885 ± 75"), (0.0, 0.0, "0 ± 0"),
])
def test_mean_and_std_share_one_decimal_place(mean, std, shown) -> None:
    """A spread is not printed to more precision than its mean ('0.897 ± 0.00141' was)."""
    from reports.verdict import Stat

    assert Stat(mean, std, 2).fmt() == shown
