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
or metric fails here instead of leaving a stale page.

An HTML comment on the line before a block says more about it:

- ``<!-- docs: setup NAME -->``: first call ``tests/docs_fixtures.py:NAME(folder)`` (files the prose
  describes but that would distract as code, e.g. a deliberately broken image folder).
- ``<!-- docs: skip REASON -->``: not run here, for the reason given (set-up commands that this suite
  itself is run by, for one). Every skip must state its reason.

Maintainers: ``DOCS_UPDATE=1`` rewrites the console and pycon blocks with what they print today (review the
diff: it is the documentation's behaviour changing); ``DOCS_WORKDIR=DIR`` runs each page in ``DIR/<page>``
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
_DIRECTIVE = re.compile(r"^<!--\s*docs:\s*(setup|skip)\s*(.*?)\s*-->\s*$")
# A duration as the CLIs print them: "2.7 s", "(6.2 s;", "129 s so far", "3.9 min", "24.0 ms".
_DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:e-?\d+)? ?(s|ms|min)\b")


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
    """doctest's checker after duration normalization, ELLIPSIS and NORMALIZE_WHITESPACE always on."""

    FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return super().check_output(normalize(want) + "\n", normalize(got) + "\n", optionflags | self.FLAGS)


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


def run_console(block: Block, page: Path, cwd: Path, env: dict[str, str]) -> str | None:
    """Run a console block; with DOCS_UPDATE=1 set, return the block's text with today's outputs instead of
    failing (for a maintainer refreshing a page on purpose; review the diff before committing)."""
    update = bool(os.environ.get("DOCS_UPDATE"))
    new: list[str] = []
    for cmd, want in console_steps(block.text):
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        got = proc.stdout
        new += ["$ " + cmd.replace("\n", "\\\n"), *([got.rstrip("\n")] if got.strip() else [])]
        if update:
            continue
        if not Checker().check_output(want, got, 0):
            raise AssertionError(
                f"{page_id(page)}:{block.line}: `$ {cmd}` printed (exit {proc.returncode}):\n"
                f"{textwrap.indent(got.rstrip(), '    ')}\nbut the page shows:\n{textwrap.indent(want, '    ')}")
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


def refresh_pycon(block: Block, ns: dict) -> str:
    """DOCS_UPDATE=1: run a pycon block and return it with today's outputs (comments kept, review the diff)."""
    import contextlib
    import io

    out: list[str] = []
    for ex in doctest.DocTestParser().get_examples(block.text):
        src = ex.source.rstrip("\n").split("\n")
        out += [">>> " + src[0], *("... " + line for line in src[1:])]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(ex.source, "<docs>", "single"), ns)
        if buf.getvalue().strip():
            out.append(buf.getvalue().rstrip("\n"))
    return "\n".join(out)


def run_pycon(block: Block, page: Path, ns: dict) -> None:
    name = f"{page_id(page)}:{block.line}"
    test = doctest.DocTestParser().get_doctest(block.text, ns, name, str(page), block.line)
    runner = doctest.DocTestRunner(checker=Checker(), optionflags=Checker.FLAGS)
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
            if "setup" in kinds:
                getattr(fixtures, kinds["setup"])(tmp_path)
            if block.lang == "console":
                new = run_console(block, page, tmp_path, docs_env)
                if new is not None and new != block.text:
                    updated[block.line] = new
            elif block.lang == "pycon" and os.environ.get("DOCS_UPDATE"):
                new = refresh_pycon(block, ns)
                if new != block.text:
                    updated[block.line] = new
            elif block.lang == "pycon":
                run_pycon(block, page, ns)
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
