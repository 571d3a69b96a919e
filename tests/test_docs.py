"""Every code block of README.md and docs/ runs, and its shown output is what it prints today.

How a page's fenced blocks are treated, by their language:

- ``console``: each ``$ command`` line (a trailing backslash continues it) runs in bash in the page's working
  folder, with the venv's console scripts on PATH; the lines after it, up to the next ``$``, are the expected
  output (stdout and stderr together), compared like doctest with ELLIPSIS and NORMALIZE_WHITESPACE.
- ``pycon``: a doctest (``>>>`` lines and their output), run in the page's namespace.
- ``python``: executed in the page's namespace; it must not raise.
- ``text``, ``json``, ``csv``: shown output or file contents, not code.

Blocks of one page run in order in one temporary folder and share one Python namespace, so a page reads
top to bottom like a session. Durations ("2.7 s", "3.9 min", "4 ms") are compared as "some duration": they
are measurements of this machine, not behaviour. Everything else must match, so a changed message, count
or metric fails here instead of leaving a stale page; numbers that come out of training are the one
exception, under a ``tolerance`` directive (below).

An HTML comment on the line before a block says more about it:

- ``<!-- docs: setup NAME -->``: first call ``tests/docs_fixtures.py:NAME(folder)`` (files the prose
  describes but that would distract as code, e.g. a deliberately broken image folder).
- ``<!-- docs: skip REASON -->``: not run here, for the reason given (set-up commands that this suite
  itself is run by, for one). Every skip must state its reason.
- ``<!-- docs: tolerance rel=R abs=A [KEY:rel=R KEY:abs=A ...] REASON -->``: the block prints numbers that
  come out of training (losses, metrics of trained models). Training's floats differ from one CPU to another
  (other kernels, other summation orders, other thread counts) and a GAN's trajectory amplifies the last
  bit, so the same seed agrees across machines only within the seed spread. In such a block every number
  written with a decimal point or an exponent ("1.9933", "9e-05") matches any printed number within
  ``max(A, R * |page's value|)``, where a number labelled KEY (the word just before it: ``loss_g 0.0225``,
  ``fid=6.39``, ``'fid': 60.481``) uses KEY's own R and A when the directive gives them; a KEY with its own
  tolerance also bends ``KEY=<integer>`` (a float that 3-significant-digit formatting prints without
  decimals, ``fid=201``). Other integers, words and punctuation stay exact, durations keep their rule, and a
  block without the directive is compared exactly. Every tolerance must state its reason; the spreads the
  tolerances rest on are in benchmarks/RESULTS.md, "Docs examples on other kernels". A training-dependent
  integer or word (a count of flagged copies, a verdict) that moves across kernels belongs behind an
  ellipsis with a sentence on the page saying why, never under a looser rule.

Maintainers: ``DOCS_UPDATE=1`` rewrites the console and pycon blocks with what they print today (review the
diff: it is the documentation's behaviour changing; the directives above a block stay, and a step of a
``tolerance`` block whose output is still within its tolerance keeps the page's text, so a refresh on
another machine does not churn trained digits); ``DOCS_WORKDIR=DIR`` runs each page in ``DIR/<page>``
and keeps the files (the tutorial's screenshots are taken from there, see docs/tutorial.md).
"""
from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = {"console", "pycon", "python"}
SHOWN = {"text", "json", "csv"}

_FENCE = re.compile(r"^```([\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*docs:\s*(setup|skip|tolerance)\s*(.*?)\s*-->\s*$")
# A duration as the CLIs print them: "2.7 s", "(6.2 s;", "129 s so far", "3.9 min", "24.0 ms".
_DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:e-?\d+)? ?(s|ms|min)\b")
# What a tolerance block compares within its tolerance: a number with a decimal point or an exponent, not
# part of a word or of a dotted version ("cvae-s0", "v1.2", "2.5.1" stay exact); integers stay exact.
_FLOAT = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?!\w|\.\d)")
# What may stand where the page shows such a number (today's output may print 0.0036 as "0", say).
_ANY_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
# A number's label on the page: the word just before it ("loss_g 0.0225", "fid=6.39", "'fid': 60.481").
_LABEL = re.compile(r"([A-Za-z_][\w-]*)['\"]?(?:=|: ?| )$")


@dataclass(frozen=True)
class Tolerance:
    """``<!-- docs: tolerance rel=R abs=A [KEY:rel=R] [KEY:abs=A] ... REASON -->``: a printed number ``got``
    matches the page's ``want`` when ``|got - want| <= max(A, R * |want|)``, with the R and A of the number's
    label where the directive gives that label its own (``loss_g:abs=0.04``). The label is the word just
    before the number: ``loss_g 0.0225``, ``fid=6.39``, ``'fid': 60.481``."""

    rel: float
    abs: float
    reason: str
    keys: tuple[tuple[str, float, float], ...] = ()  # (label, rel, abs): a label's own tolerance

    @classmethod
    def parse(cls, arg: str, where: str = "") -> "Tolerance":
        usage = "<!-- docs: tolerance rel=R abs=A [KEY:rel=R KEY:abs=A ...] REASON -->"
        spec: dict[str, dict[str, float]] = {}
        words = arg.split()
        while words and (m := re.fullmatch(r"(?:([A-Za-z_][\w-]*):)?(rel|abs)=(\S*)", words[0])):
            words.pop(0)
            try:
                value = float(m.group(3))
            except ValueError:
                raise AssertionError(f"{where}: tolerance {m.group(0)!r}: not a number; {usage}") from None
            assert 0 <= value < float("inf"), f"{where}: tolerance {m.group(0)!r} must be >= 0 and finite"
            spec.setdefault(m.group(1) or "", {"rel": 0.0, "abs": 0.0})[m.group(2)] = value
        assert spec and all(v["rel"] > 0 or v["abs"] > 0 for v in spec.values()), (
            f"{where}: a tolerance needs a positive rel=R and/or abs=A for the block and each KEY it names: {usage}")
        assert words, f"{where}: a tolerance must say why: {usage}"
        block = spec.pop("", {"rel": 0.0, "abs": 0.0})
        keys = tuple((k, v["rel"], v["abs"]) for k, v in spec.items())
        return cls(block["rel"], block["abs"], " ".join(words), keys)

    def limits(self, label: str | None) -> tuple[float, float]:
        """(rel, abs) for a number with this label."""
        return next(((r, a) for k, r, a in self.keys if k == label), (self.rel, self.abs))

    def allows(self, want: float, got: float, label: str | None = None) -> bool:
        rel, abs_ = self.limits(label)
        return abs(got - want) <= max(abs_, rel * abs(want))

    def numbers(self) -> re.Pattern:
        """What is compared within the tolerance on the page: decimal numbers, and a KEY's number that the
        3-significant-digit formatting printed without decimals (``fid=201``) when KEY has its own tolerance."""
        if not self.keys:
            return _FLOAT
        after = "|".join(rf"(?<=\b{re.escape(k)}{sep})" for k, _, _ in self.keys  # fixed-width lookbehinds
                         for sep in ("=", " ", "': ", '": '))
        return re.compile(rf"{_FLOAT.pattern}|(?:{after})[-+]?\d+(?![\w.])")

    def __str__(self) -> str:
        text = [f"rel={self.rel:g} abs={self.abs:g}"] + [f"{k}:rel={r:g} {k}:abs={a:g}" for k, r, a in self.keys]
        return " ".join(text)


@dataclass
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    directives: list[tuple[str, str]] = field(default_factory=list)


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the ``docs:`` directives just above each."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i].strip()) if lines[i].lstrip().startswith("```") else None
        if not m:
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        directives = []
        j = start - 1
        while j >= 0 and _DIRECTIVE.match(lines[j].strip()):
            d = _DIRECTIVE.match(lines[j].strip())
            directives.insert(0, (d.group(1), d.group(2)))
            j -= 1
        blocks.append(Block(m.group(1).lower(), "\n".join(body), start + 1, directives))
        i += 1
    return blocks


def normalize(text: str) -> str:
    """Durations become a placeholder; trailing spaces go."""
    text = _DURATION.sub(lambda m: "<duration " + m.group(1) + ">", text)
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


class Checker(doctest.OutputChecker):
    """doctest's checker after duration normalization, ELLIPSIS and NORMALIZE_WHITESPACE always on; with a
    ``tolerance``, the page's decimal numbers match printed numbers within it (everything else still exact)."""

    FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

    def __init__(self, tolerance: Tolerance | None = None) -> None:
        self.tolerance = tolerance

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if self.tolerance is None:
            return super().check_output(normalize(want) + "\n", normalize(got) + "\n", optionflags | self.FLAGS)
        return not self.mismatch(want, got)

    def mismatch(self, want: str, got: str) -> str:
        """Why ``got`` does not match ``want`` under the tolerance ("" when it does)."""
        assert self.tolerance is not None
        want_s = " ".join(normalize(want.replace("<BLANKLINE>", "")).split())
        got_s = " ".join(normalize(got).split())
        pattern, wanted, pos = [], [], 0
        for m in self.tolerance.numbers().finditer(want_s):
            pattern += [_literal(want_s[pos:m.start()]), _ANY_NUMBER]
            label = _LABEL.search(want_s[:m.start()])
            wanted.append((m.group(), label.group(1) if label else None))
            pos = m.end()
        pattern.append(_literal(want_s[pos:]))
        m = re.fullmatch("".join(pattern), got_s, re.DOTALL)
        if not m:
            return "the text around the numbers differs (integers, words and punctuation are compared exactly)"
        off = [f"{g} (page: {w}{', ' + label if label else ''})" for (w, label), g in zip(wanted, m.groups())
               if not self.tolerance.allows(float(w), float(g), label)]
        return f"outside the tolerance {self.tolerance}: {', '.join(off)}" if off else ""

    def output_difference(self, example: doctest.Example, got: str, optionflags: int) -> str:
        diff = super().output_difference(example, got, optionflags)
        if self.tolerance is not None:
            diff += f"({self.mismatch(example.want, got)})\n"
        return diff


def _literal(text: str) -> str:
    """A regex for literal page text, where "..." (doctest's ELLIPSIS) matches anything."""
    return ".*?".join(re.escape(part) for part in text.split("..."))


def console_steps(text: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console block."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd[:-1] + "\n" + lines[i]
            steps.append((cmd, []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"console block text before the first '$ ' command: {line!r}")
        i += 1
    return [(c, "\n".join(out).strip("\n")) for c, out in steps]


def run_console(block: Block, page: Path, cwd: Path, env: dict[str, str],
                tolerance: Tolerance | None = None) -> str | None:
    """Run a console block; with DOCS_UPDATE=1 set, return the block's text with today's outputs instead of
    failing (for a maintainer refreshing a page on purpose; review the diff before committing). Under a
    tolerance, a step whose output is within it keeps the page's text."""
    update = bool(os.environ.get("DOCS_UPDATE"))
    checker = Checker(tolerance)
    new: list[str] = []
    for cmd, want in console_steps(block.text):
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        got = proc.stdout
        if update and tolerance is not None and checker.check_output(want, got, 0):
            got = want
        new += ["$ " + cmd.replace("\n", "\\\n"), *([got.rstrip("\n")] if got.strip() else [])]
        if update:
            continue
        if not checker.check_output(want, got, 0):
            why = f"\n({checker.mismatch(want, got)}; {tolerance.reason})" if tolerance else ""
            raise AssertionError(
                f"{page_id(page)}:{block.line}: `$ {cmd}` printed (exit {proc.returncode}):\n"
                f"{textwrap.indent(got.rstrip(), '    ')}\nbut the page shows:\n{textwrap.indent(want, '    ')}{why}")
    return "\n".join(new) if update else None


def rewrite_blocks(page: Path, new_texts: dict[int, str]) -> None:
    """Replace the bodies of the blocks opening at the given lines (DOCS_UPDATE=1)."""
    lines = page.read_text(encoding="utf-8").split("\n")
    for line in sorted(new_texts, reverse=True):
        end = line
        while lines[end].strip() != "```":
            end += 1
        lines[line:end] = new_texts[line].split("\n")
    page.write_text("\n".join(lines), encoding="utf-8")


def refresh_pycon(block: Block, ns: dict, tolerance: Tolerance | None = None) -> str:
    """DOCS_UPDATE=1: run a pycon block and return it with today's outputs (comments kept, review the diff);
    under a tolerance, an output within it keeps the page's text."""
    import contextlib
    import io

    checker = Checker(tolerance)
    out: list[str] = []
    for ex in doctest.DocTestParser().get_examples(block.text):
        src = ex.source.rstrip("\n").split("\n")
        out += [">>> " + src[0], *("... " + line for line in src[1:])]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(ex.source, "<docs>", "single"), ns)
        got = buf.getvalue()
        if tolerance is not None and checker.check_output(ex.want, got, 0):
            got = ex.want
        if got.strip():
            out.append(got.rstrip("\n"))
    return "\n".join(out)


def run_pycon(block: Block, page: Path, ns: dict, tolerance: Tolerance | None = None) -> None:
    name = f"{page_id(page)}:{block.line}"
    test = doctest.DocTestParser().get_doctest(block.text, ns, name, str(page), block.line)
    runner = doctest.DocTestRunner(checker=Checker(tolerance), optionflags=Checker.FLAGS)
    out: list[str] = []
    runner.run(test, out=out.append, clear_globs=False)
    ns.update(test.globs)  # DocTest works on a copy; later blocks of the page see these names
    if runner.failures:
        raise AssertionError("".join(out))


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory) -> dict[str, str]:
    """Environment for the examples: this venv's scripts first, a shared feature cache, no progress bars."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DATAMATTERS_CACHE"] = str(tmp_path_factory.mktemp("docs-cache"))
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleave as a terminal shows them
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="module")
def fresh_torch_threads(docs_env: dict[str, str]) -> int:
    """The torch thread count a new interpreter starts with here (earlier tests may have changed ours)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=docs_env,
                         capture_output=True, text=True, check=True).stdout
    return int(out)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_examples_run(page: Path, tmp_path: Path, docs_env: dict[str, str], fresh_torch_threads: int,
                           monkeypatch) -> None:
    import docs_fixtures as fixtures  # tests/ is on sys.path (rootdir-relative test modules)

    blocks = parse_blocks(page)
    if os.environ.get("DOCS_WORKDIR"):  # keep what the examples make (e.g. to take the tutorial's screenshots)
        tmp_path = Path(os.environ["DOCS_WORKDIR"]).resolve() / page.stem
        tmp_path.mkdir(parents=True, exist_ok=False)
    monkeypatch.chdir(tmp_path)
    for k, v in docs_env.items():
        monkeypatch.setenv(k, v)
    ns: dict = {"__name__": "__docs__"}
    updated: dict[int, str] = {}
    # The Python examples run in this process: give them a fresh interpreter's torch thread count, whatever
    # earlier tests set, so their numbers are those a reader's new session prints on this machine.
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(fresh_torch_threads)
    try:
        for block in blocks:
            where = f"{page_id(page)}:{block.line}"
            kinds = dict(block.directives)
            if "skip" in kinds:
                assert kinds["skip"], f"{where}: a skipped block must say why (<!-- docs: skip REASON -->)"
                continue
            assert block.lang in RUN | SHOWN, (
                f"{where}: a ```{block.lang or '(no language)'} block; use console, pycon or python for code "
                f"(text/json/csv for shown output), or say why it is not run with <!-- docs: skip REASON -->")
            tolerance = Tolerance.parse(kinds["tolerance"], where) if "tolerance" in kinds else None
            assert tolerance is None or block.lang in ("console", "pycon"), (
                f"{where}: a tolerance applies to the output of a console or pycon block, not ```{block.lang}")
            if "setup" in kinds:
                getattr(fixtures, kinds["setup"])(tmp_path)
            if block.lang == "console":
                new = run_console(block, page, tmp_path, docs_env, tolerance)
                if new is not None and new != block.text:
                    updated[block.line] = new
            elif block.lang == "pycon" and os.environ.get("DOCS_UPDATE"):
                new = refresh_pycon(block, ns, tolerance)
                if new != block.text:
                    updated[block.line] = new
            elif block.lang == "pycon":
                run_pycon(block, page, ns, tolerance)
            elif block.lang == "python":
                code = compile(block.text, where, "exec")
                exec(code, ns)
    finally:
        torch.set_num_threads(threads_before)
        if updated:
            rewrite_blocks(page, updated)


def test_checker_catches_a_changed_output() -> None:
    """The comparison is not vacuous: a changed number or word fails, a changed duration does not."""
    c = Checker()
    assert c.check_output("audit of digits: 1797 images in 2.7 s", "audit of digits: 1797 images in 3.1 s", 0)
    assert not c.check_output("1797 images, 3 duplicate groups", "1797 images, 4 duplicate groups", 0)
    assert not c.check_output("fid=200.8", "fid=200.9", 0)
    assert c.check_output("fingerprint ...", "fingerprint d1a9ec", 0)


def test_tolerance_bends_trained_floats_only() -> None:
    """Under a tolerance, a decimal number within it passes and one outside fails; a changed integer, word or
    punctuation still fails; durations and ellipses keep their rules; without one, a float digit fails."""
    page = "trained cgan for 400 steps in 3.5 s (loss_d 1.9933, loss_g 0.0225)\nmodes_covered=10, kl=9e-05"
    c = Checker(Tolerance(rel=0.05, abs=0.01, reason="trained"))
    assert c.check_output(page, "trained cgan for 400 steps in 71.5 s (loss_d 1.9901, loss_g 0.0260)\n"
                                "modes_covered=10, kl=0.000102", 0)
    assert c.check_output(page, page.replace("1.9933", "2.09").replace("0.0225", "0.0125"), 0)  # rel / abs edge
    assert c.check_output(page, page.replace("9e-05", "0"), 0)  # a float may print as an integer
    assert not c.check_output(page, page.replace("1.9933", "2.1"), 0)  # 5.4% off: outside rel=0.05
    assert not c.check_output(page, page.replace("0.0225", "0.04"), 0)  # 0.0175 off: outside abs=0.01
    assert not c.check_output(page, page.replace("0.0225", "nan"), 0)
    assert not c.check_output(page, page.replace("400 steps", "401 steps"), 0)  # integers stay exact
    assert not c.check_output(page, page.replace("=10,", "=9,"), 0)
    assert not c.check_output(page, page.replace("cgan", "dcgan"), 0)  # words too
    assert not c.check_output(page, page.replace("loss_d 1.9933,", "loss_d 1.9933;"), 0)
    assert not c.check_output(page, page + " extra", 0)
    assert "outside the tolerance rel=0.05 abs=0.01: 2.1 (page: 1.9933, loss_d)" in c.mismatch(
        page, page.replace("1.9933", "2.1"))
    assert c.check_output("fid=60.4, ... n_fake=1797", "fid=60.1, precision=1.0, recall=0.03, n_fake=1797", 0)
    assert not c.check_output("fid=60.4, ... n_fake=1797", "fid=60.1, precision=1.0, n_fake=1796", 0)
    # Arm ids, versions and integers written next to decimals are not decimals of their own.
    assert not c.check_output("size-0.25-cvae-s0 torch 2.5.1", "size-0.25-cvae-s1 torch 2.5.1", 0)
    assert not c.check_output("torch 2.5.1", "torch 2.5.2", 0)
    assert c.check_output("size-0.25-cvae-s0 -1.50", "size-0.25-cvae-s0 -1.52", 0)
    assert not c.check_output("x -1.50", "x 1.50", 0)
    # A label's own tolerance: "loss_g 0.0225" and "'fid': 60.5" by their label, the rest by the block's.
    k = Checker(Tolerance.parse("rel=0.01 loss_g:abs=0.04 fid:rel=0.05 trained"))
    assert k.check_output(page, page.replace("0.0225", "0.0600").replace("1.9933", "1.9800"), 0)
    assert not k.check_output(page, page.replace("0.0225", "0.0700"), 0)
    assert not k.check_output(page, page.replace("1.9933", "2.0400"), 0)  # loss_d keeps rel=0.01
    assert "2.0400 (page: 1.9933, loss_d)" in k.mismatch(page, page.replace("1.9933", "2.0400"))
    assert k.check_output("{'fid': 60.481, 'recall': 0.03}", "{'fid': 63.0, 'recall': 0.0302}", 0)
    assert not k.check_output("{'fid': 60.481, 'recall': 0.03}", "{'fid': 60.481, 'recall': 0.031}", 0)
    # ... and bends its integers, which 3-significant-digit formatting prints for a float (fid=201); others
    # stay exact.
    assert k.check_output("fid=201, kid_mean=154, n_real=899", "fid=208, kid_mean=154, n_real=899", 0)
    assert k.check_output("fid=201, n_real=899", "fid=198.5, n_real=899", 0)
    assert not k.check_output("fid=201, n_real=899", "fid=212, n_real=899", 0)
    assert not k.check_output("fid=201, kid_mean=154", "fid=201, kid_mean=155", 0)
    assert not k.check_output("fid=201, n_real=899", "fid=201, n_real=898", 0)
    assert not k.check_output("myfid=201", "myfid=202", 0)
    assert not c.check_output("fid=201", "fid=202", 0)
    # A pandas table: columns realign when a number's width changes.
    assert c.check_output("      fid  n\nb  25.004  618", "     fid  n\nb  25.1  618", 0)
    # A block without the directive is exact, as before.
    assert not Checker().check_output(page, page.replace("0.0225", "0.0226"), 0)
    assert Checker().check_output(page, page.replace("3.5 s", "71.5 s"), 0)


def test_tolerance_directive_is_parsed_and_needs_a_reason(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("<!-- docs: setup messy -->\n<!-- docs: tolerance rel=0.2 abs=0.05 GAN losses -->\n"
                    "```console\n$ true\n```\n", encoding="utf-8")
    (b,) = parse_blocks(page)
    assert b.directives == [("setup", "messy"), ("tolerance", "rel=0.2 abs=0.05 GAN losses")]
    assert Tolerance.parse(b.directives[1][1]) == Tolerance(0.2, 0.05, "GAN losses")
    assert Tolerance.parse("abs=3 seed spread") == Tolerance(0.0, 3.0, "seed spread")
    t = Tolerance.parse("rel=0.01 loss_g:abs=0.04 fid:rel=0.05 fid:abs=1 GAN losses")
    assert t == Tolerance(0.01, 0, "GAN losses", (("loss_g", 0, 0.04), ("fid", 0.05, 1.0)))
    assert t.limits("fid") == (0.05, 1.0) and t.limits("loss_d") == t.limits(None) == (0.01, 0)
    assert Tolerance.parse("fid:rel=0.05 only fid bends").limits("kid") == (0, 0)
    for bad in ("rel=0.2 abs=0.05", "why not", "rel=x reason", "rel=0 abs=0 reason", "rel=-1 reason",
                "rel=inf reason", "rel=0.1 fid:rel=0 reason", "rel= reason"):
        with pytest.raises(AssertionError):
            Tolerance.parse(bad)


def test_update_keeps_directives_and_page_text_within_tolerance(tmp_path: Path, monkeypatch) -> None:
    """DOCS_UPDATE=1: a step within its tolerance keeps the page's digits, one outside takes today's output,
    an exact block takes today's output, and the directive lines above the blocks stay."""
    page = tmp_path / "p.md"
    page.write_text("# t\n\n<!-- docs: tolerance rel=0.1 trained -->\n```console\n$ echo loss 1.03\nloss 1.00\n"
                    "$ echo loss 2.00\nloss 1.00\n```\n\n```console\n$ echo loss 1.03\nloss 1.00\n```\n",
                    encoding="utf-8")
    monkeypatch.setenv("DOCS_UPDATE", "1")
    tol, exact = parse_blocks(page)
    new = {b.line: run_console(b, page, tmp_path, dict(os.environ), Tolerance.parse(dict(b.directives)[
        "tolerance"]) if b.directives else None) for b in (tol, exact)}
    rewrite_blocks(page, new)
    assert page.read_text(encoding="utf-8") == (
        "# t\n\n<!-- docs: tolerance rel=0.1 trained -->\n```console\n$ echo loss 1.03\nloss 1.00\n"
        "$ echo loss 2.00\nloss 2.00\n```\n\n```console\n$ echo loss 1.03\nloss 1.03\n```\n")
    monkeypatch.delenv("DOCS_UPDATE")
    ns: dict = {}
    pycon = Block("pycon", ">>> print(1.04, 7)\n1.00 7\n>>> print(1.5)\n1.00", 1)
    assert refresh_pycon(pycon, ns, Tolerance(0.1, 0, "t")) == ">>> print(1.04, 7)\n1.00 7\n>>> print(1.5)\n1.5"
    with pytest.raises(AssertionError, match="outside the tolerance rel=0.1 abs=0: 1.5 \\(page: 1.00\\)"):
        run_pycon(pycon, ROOT / "docs" / "p.md", ns, Tolerance(0.1, 0, "t"))


def test_pages_tolerances_state_reasons_and_training_digits_are_never_exact() -> None:
    """Every tolerance on the pages parses (so it states a reason) and sits on a console or pycon block; and a
    training command's printed losses sit under one (the digits of trained floats vary by CPU)."""
    trained = re.compile(r"^trained \w+ for \d+ steps", re.M)
    seen = 0
    for page in PAGES:
        for block in parse_blocks(page):
            kinds = dict(block.directives)
            where = f"{page_id(page)}:{block.line}"
            if "tolerance" in kinds:
                Tolerance.parse(kinds["tolerance"], where)
                assert block.lang in ("console", "pycon"), where
                seen += 1
            elif block.lang in RUN and "skip" not in kinds:
                assert not trained.search(block.text), f"{where}: trained losses shown exactly; add a tolerance"
    assert seen, "no page has a tolerance block"


# "Another CPU": AVX2 instead of this CPU's AVX-512 for ATen's own kernels and MKL's matmuls, and one thread
# instead of all cores (another summation order). oneDNN's convolutions keep their kernels: capping them
# (ONEDNN_MAX_CPU_ISA) makes some convolutions 10x slower here. benchmarks/RESULTS.md, "Docs examples on
# other kernels", has the spreads under more settings.
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(bool(os.environ.get("DOCS_UPDATE") or os.environ.get("DOCS_WORKDIR")),
                    reason="a maintainer's refresh or screenshot run: it rewrites or keeps pages, not this check")
def test_readme_examples_hold_on_other_cpu_kernels(tmp_path: Path) -> None:
    """The README's examples (a GAN's losses, the metrics of its samples, a trained VAE's metrics) pass on this
    machine under other CPU kernels and another thread count, as on another CPU: the tolerances on the page
    cover the spread that training's floating point makes, while everything exact stays exact."""
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("DOCS_UPDATE", "DOCS_WORKDIR", "PYTEST_ADDOPTS")}
    here = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    env.update(OTHER_KERNELS)
    there = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    if here.stdout == there.stdout:
        pytest.skip(f"this machine runs the same kernels and threads under {OTHER_KERNELS}: {here.stdout.strip()}")
    proc = subprocess.run([sys.executable, "-m", "pytest", f"{__file__}::test_page_examples_run[README.md]", "-q",
                           "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "run")], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, f"under {OTHER_KERNELS} ({there.stdout.strip()}, here {here.stdout.strip()}):\n" \
                                 f"{proc.stdout[-6000:]}"


def test_parser_reads_commands_outputs_and_directives(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("x\n<!-- docs: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
                    "```console\n$ echo a \\\n  b\na b\n$ true\n```\n", encoding="utf-8")
    b = parse_blocks(page)
    assert [x.lang for x in b] == ["bash", "console"]
    assert b[0].directives == [("skip", "needs a GPU")]
    assert console_steps(b[1].text) == [("echo a \n  b", "a b"), ("true", "")]


def test_readme_test_command_is_what_ci_runs() -> None:
    """The README's test command is the one .ci/run executes, so the README cannot drift from CI."""
    ci = (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in ci and "bash scripts/test.sh" in readme
    assert "bash scripts/demo.sh" in readme and (ROOT / "scripts/demo.sh").exists()
    assert len(readme.splitlines()) <= 250
