"""Docs that stand alone: nothing users see points at material they do not have (the internal
spec, its checklists, issue numbers, the ../shared folder), and every ``docs/<file>.md#anchor``
that code, gin files, tests or docs point at is a heading of that file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What users read: the package, its configs, plugins, docs, scripts, tools, benchmarks and the README.
USER_FACING = ("mlr_registry", "gin", "plugins", "docs", "scripts", "tools", "benchmarks", "README.md")
# Where pointers into docs/ may come from: the above, and the tests.
POINTING = (*USER_FACING, "tests")
# The spec's section numbers ("§4.7") mean nothing without it either.
FORBIDDEN = re.compile(r"MLR_SPEC|checklist\s+(?:item\s+)?\d|issue\s+#\d|\.\./shared|§\s*\d", re.IGNORECASE)
POINTER = re.compile(r"docs/([\w.-]+\.md)#([\w-]+)")
# Inside a docs/*.md file: [text](#anchor) and [text](other.md#anchor).
LINK = re.compile(r"\]\((?:([\w.-]+\.md))?#([\w-]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def tracked(*paths: str) -> list[Path]:
    """The git-tracked text files under ``paths`` (skips the test outside a git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in out.decode().split("\0") if name]
    return [f for f in files if f.is_file() and f.suffix not in {".png", ".jpg", ".gz", ".pt", ".npz"}]


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading's text: lower-case, punctuation dropped (word
    characters, spaces and hyphens kept), each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text, repeated headings numbered ``-1``, ``-2`` as GitHub
    does; headings inside fenced code blocks do not count."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = github_anchor(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def forbidden_mentions(text: str) -> list[str]:
    """The lines of ``text`` that point at material users do not have."""
    return [line.strip() for line in text.splitlines() if FORBIDDEN.search(line)]


def broken_pointers(sources: list[Path], docs_dir: Path) -> list[str]:
    """``file:line: docs/x.md#a`` for each pointer whose file or heading does not exist."""
    cache: dict[str, set[str] | None] = {}

    def has(doc: str, anchor: str) -> bool:
        if doc not in cache:
            path = docs_dir / doc
            cache[doc] = anchors(read(path)) if path.is_file() else None
        return cache[doc] is not None and anchor in cache[doc]

    broken = []
    for source in sources:
        text = read(source)
        for lineno, line in enumerate(text.splitlines(), 1):
            found = [(doc, anchor) for doc, anchor in POINTER.findall(line)]
            if source.parent == docs_dir and source.suffix == ".md":
                found += [(doc or source.name, anchor) for doc, anchor in LINK.findall(line)]
            for doc, anchor in found:
                if not has(doc, anchor):
                    broken.append(f"{source.relative_to(ROOT) if source.is_relative_to(ROOT) else source}:"
                                  f"{lineno}: docs/{doc}#{anchor}")
    return broken


def test_github_anchor_rules():
    assert github_anchor("Atari: replay and n-step returns") == "atari-replay-and-n-step-returns"
    assert github_anchor("DMC: MLR loss") == "dmc-mlr-loss"
    assert github_anchor("Measured on a GPU (one H100, 26 November 2026)") == \
        "measured-on-a-gpu-one-h100-26-november-2026"
    assert anchors("# A\n## A\n```\n# B\n```\n### C.d\n") == {"a", "a-1", "cd"}


def test_forbidden_mentions_are_found():
    text = "ok\nsee MLR_SPEC §3\nchecklist 25 says\nChecklist item 9\nissue #7\nIssue #9's\n../shared/x\nfine"
    assert len(forbidden_mentions(text)) == 6
    assert forbidden_mentions("the one Adam (§4.9).") == ["the one Adam (§4.9)."]
    assert forbidden_mentions("the checklist of docs, issue tracking, shared memory") == []


def test_broken_pointers_are_found(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Top\n## Atari: masking\nsee [x](#top) and [y](#nowhere)\n")
    code = tmp_path / "m.py"
    code.write_text("# docs/a.md#atari-masking docs/a.md#atari-agent docs/b.md#top\n")
    broken = broken_pointers([code, docs / "a.md"], docs)
    assert [b.split(": ", 1)[1] for b in broken] == ["docs/a.md#atari-agent", "docs/b.md#top", "docs/a.md#nowhere"]


def test_nothing_user_facing_points_at_internal_material():
    offending = [f"{f.relative_to(ROOT)}: {line}"
                 for f in tracked(*USER_FACING) for line in forbidden_mentions(read(f))]
    assert offending == [], ("users have no internal spec, checklist, issue tracker or ../shared; "
                             "point at docs/faithfulness.md#<topic> instead:\n" + "\n".join(offending))


def test_every_docs_pointer_names_an_existing_heading():
    sources = [f for f in tracked(*POINTING) if f != Path(__file__).resolve()]  # this file's examples
    broken = broken_pointers(sources, ROOT / "docs")
    assert broken == [], "pointers to missing docs headings:\n" + "\n".join(broken)


# A relative Markdown link: [text](path), [text](path#anchor) or [text](#anchor); not http(s).
RELATIVE_LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s#]*)(?:#([\w-]+))?\)")


def broken_links(markdown_files: list[Path]) -> list[str]:
    """``file:line: target`` for each relative link whose file, or heading in it, does not exist."""
    broken = []
    for source in markdown_files:
        fenced = False
        for lineno, line in enumerate(read(source).splitlines(), 1):
            if FENCE.match(line):
                fenced = not fenced
            if fenced:
                continue
            for target, anchor in RELATIVE_LINK.findall(line):
                path = (source.parent / target).resolve() if target else source
                ok = path.exists() and (not anchor or (path.suffix == ".md" and anchor in anchors(read(path))))
                if not ok:
                    broken.append(f"{source.relative_to(ROOT)}:{lineno}: {target}#{anchor}" if anchor
                                  else f"{source.relative_to(ROOT)}:{lineno}: {target}")
    return broken


def test_broken_links_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Top\n")
    readme = tmp_path / "README.md"
    readme.write_text("[ok](docs/a.md) [ok](docs/a.md#top) [no](docs/b.md) [no](docs/a.md#x) "
                      "[web](https://example.org/x.md)\n```\n[fenced](nowhere.md)\n```\n")
    assert broken_links([readme]) == ["README.md:1: docs/b.md", "README.md:1: docs/a.md#x"]


def test_readme_and_docs_links_resolve():
    files = [f for f in tracked("README.md", "docs") if f.suffix == ".md"]
    assert len(files) >= 10
    broken = broken_links(files)
    assert broken == [], "links to missing files or headings:\n" + "\n".join(broken)


def test_readme_is_the_front_page_not_the_manual():
    """The README says what the project is, the two commands, and where to read on; everything
    else lives in docs/, which it links."""
    readme = read(ROOT / "README.md")
    assert len(readme.splitlines()) <= 250
    for doc in ("faithfulness", "tracking", "report", "ablations", "checkpoints", "sweeps", "gpu",
                "performance", "plugins", "development", "training"):
        assert f"(docs/{doc}.md" in readme, f"the README links no docs/{doc}.md"
