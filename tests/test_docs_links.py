"""Every `docs/<page>.md#<heading>` that the code, configs, scripts, tests or docs cite exists.

Code comments cite the docs pages by heading (e.g. `docs/sampling.md#cbd-stream`); a renamed
heading or page would leave them pointing nowhere. Anchors follow GitHub's rule: the heading
in lower case, punctuation dropped, spaces turned into hyphens.
"""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
# `docs/page.md` or `docs/page.md#anchor` in code and text; `(page.md#anchor)` links in docs.
CITATION = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")
DOC_LINK = re.compile(r"\]\(([\w-]+\.md)(?:#([\w-]+))?\)")
# `docs/x.md, #anchor` continues a citation of the same page with another heading.
MORE_ANCHORS = re.compile(r",? ?(?:and )?#([\w-]+)")  # matched right after a citation


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    """The anchors of a page's headings (lines starting with `#` outside code fences)."""
    out, fenced = set(), False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            out.add(anchor(line.lstrip("#")))
    return out


def citations(text: str, pattern: re.Pattern) -> list[tuple[str, str]]:
    """(page, anchor or '') for every citation in text, extra `#anchor`s included."""
    out = []
    for m in pattern.finditer(text):
        out.append((m.group(1), m.group(2) or ""))
        pos = m.end()
        while (extra := MORE_ANCHORS.match(text, pos)) is not None:
            out.append((m.group(1), extra.group(1)))
            pos = extra.end()
    return out


def cited() -> list[tuple[str, str, str]]:
    """(file, page, anchor) for every docs citation in the repository."""
    out = []
    files = [*REPO.glob("ltkd_jax/**/*.py"), *REPO.glob("configs/*.py")]
    files += [*REPO.glob("scripts/*.py"), *REPO.glob("tests/*.py"), REPO / "README.md"]
    for path in files:
        if path.exists() and path.name != pathlib.Path(__file__).name:  # its examples
            text = path.read_text()
            out += [(path.name, p, a) for p, a in citations(text, CITATION)]
    for path in REPO.glob("docs/*.md"):
        text = path.read_text()
        out += [(path.name, p, a) for p, a in citations(text, DOC_LINK)]
    return out


def test_anchor_rule():
    assert anchor("Long-tailed CIFAR subsets") == "long-tailed-cifar-subsets"
    assert anchor('Evaluation: metrics, class groups, the "best" epoch') == (
        "evaluation-metrics-class-groups-the-best-epoch"
    )
    assert citations("docs/evaluation.md#shot-groups, #tail33)", CITATION) == [
        ("evaluation.md", "shot-groups"),
        ("evaluation.md", "tail33"),
    ]


def test_every_cited_docs_heading_exists():
    found = cited()
    assert any(p == "sampling.md" for _, p, _ in found)  # the scan sees the code's citations
    missing = []
    for where, page, ref in found:
        path = REPO / "docs" / page
        if not path.exists():
            missing.append(f"{where}: docs/{page} does not exist")
        elif ref and ref not in anchors(path):
            missing.append(f"{where}: docs/{page} has no heading #{ref}")
    assert not missing, "\n".join(sorted(set(missing)))
