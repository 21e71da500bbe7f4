"""Every relative link of the project's Markdown files points at a file that exists, and every
anchor at a heading of that file (GitHub's heading slugs)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"),
               ROOT / "tests" / "README.md", ROOT / "benchmarks" / "README.md"])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces
    to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings in code
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_slug_is_githubs():
    assert slug("Training on the chip's noise (`training.noise_model=analog`)") == \
        "training-on-the-chips-noise-trainingnoise_modelanalog"
    assert slug("Client resources (many cores, GPUs)") == "client-resources-many-cores-gpus"


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading '#{anchor}' in {path.name}")
    return broken


def test_a_missing_file_or_heading_is_found(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("# Top\n\n[ok](#top) [gone](b.md) [nowhere](#elsewhere) "
                   "[web](https://example.org)\n\n```\n# not a heading\n```\n")
    assert broken_links(doc) == [f"b.md: no file {tmp_path / 'b.md'}",
                                 "#elsewhere: no heading '#elsewhere' in a.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc):
    broken = broken_links(doc)
    assert not broken, "\n".join(broken)
