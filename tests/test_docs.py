"""The README and docs/: every relative link resolves inside the repository, nothing points at
material outside it, and the README stays a front door (short, with CI's test command)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 220
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
# [text](target "title") and ![alt](target): one level of brackets inside the text.
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
# [label]: target "title" alone on its line (CommonMark; "[0.3, 0.8]: the point ..." is prose).
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)(?:[ \t]+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?[ \t]*$", re.M)
HTML = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """The text with fenced code blocks removed (their [x](y) is code, not a link)."""
    return FENCE.sub("", text)


def links(text: str) -> list[str]:
    body = prose(text)
    # Inside a code span a bracket is literal; keep the span's text so that [`x`](y) still parses.
    body = CODE_SPAN.sub(lambda m: m.group(2).replace("[", "(").replace("]", ")"), body)
    found = [m.group(1) for m in INLINE.finditer(body)]
    found += [m.group(1) for m in REFERENCE.finditer(body)]
    found += [m.group(1) for m in HTML.finditer(body)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = prose(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(text))
    for m in HEADING.finditer(text):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links() -> list[tuple[Path, str]]:
    out = []
    for page in PAGES:
        for target in links(page.read_text(encoding="utf-8")):
            if EXTERNAL.match(target) or target.startswith("#"):
                continue
            out.append((page, target))
    return out


def test_the_pages_have_links():
    """The parser finds links at all (a regex that matched nothing would pass every check)."""
    targets = {t for p, t in relative_links() if p == README}
    assert "docs/README.md" in targets
    assert "docs/privacy/threat-model.md" in targets


@pytest.mark.parametrize("page,target", relative_links(), ids=lambda x: str(x.relative_to(ROOT)) if isinstance(x, Path) else x)
def test_relative_link_resolves_inside_the_repository(page: Path, target: str):
    path, _, fragment = target.partition("#")
    path = unquote(path.split("?", 1)[0])
    assert not path.startswith("/"), f"{page.relative_to(ROOT)}: absolute path {target!r}; link relative to the page"
    resolved = (page.parent / path).resolve()
    assert resolved == ROOT or ROOT in resolved.parents, f"{page.relative_to(ROOT)}: {target!r} points outside the repository"
    assert resolved.exists(), f"{page.relative_to(ROOT)}: {target!r} does not exist ({resolved.relative_to(ROOT)})"
    if fragment and resolved.suffix == ".md":
        assert unquote(fragment) in anchors(resolved), (
            f"{page.relative_to(ROOT)}: {target!r}: no heading with anchor #{fragment} in {resolved.relative_to(ROOT)}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_mention_of_material_outside_the_repository(page: Path):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{page.relative_to(ROOT)} mentions ../shared, which a clone does not have"
    assert "/work/shared" not in text, f"{page.relative_to(ROOT)} mentions /work/shared, which a clone does not have"


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/ (at most {README_MAX_LINES})"


def test_readme_test_command_is_the_one_ci_runs():
    """`.ci/run` runs the README's test command on a fresh clone: the two must stay identical."""
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    command = ci[ci.index("# The README's test command (keep the two identical):") + 1]
    readme = README.read_text(encoding="utf-8").splitlines()
    assert any(ln.startswith("python3 -m venv .venv && . .venv/bin/activate && ") and ln.endswith(command) for ln in readme), (
        f"README.md has no set-up line ending with .ci/run's test command {command!r}")
