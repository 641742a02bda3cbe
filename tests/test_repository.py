"""What a user clones: a light tree, every shipped model listed once, and documentation whose links resolve."""

import glob
import os
import re
import subprocess

import pytest

from conftest import ROOT

MAX_TREE_MB, MAX_FILE_MB = 80, 20


def tracked_files() -> dict:
    """The tracked files (git ls-files) and their sizes in bytes; skipped outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [n for n in out.decode().split("\0") if n]
    return {n: os.path.getsize(os.path.join(ROOT, n)) for n in names if os.path.isfile(os.path.join(ROOT, n))}


def test_the_tracked_tree_is_light_and_holds_no_resumable_checkpoint():
    files = tracked_files()
    assert sum(files.values()) <= MAX_TREE_MB * 1e6, f"{sum(files.values()) / 1e6:.1f} MB tracked"
    assert [n for n, size in files.items() if size > MAX_FILE_MB * 1e6] == []
    assert [n for n in files if os.path.basename(n) == "checkpoint.pt"] == []


def listed_models() -> dict:
    """lab/MODELS.md's table: each listed file (a `{1,2}` pattern expanded) and its size in MB."""
    rows = {}
    for line in open(os.path.join(ROOT, "lab", "MODELS.md")):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0].endswith(".pt`"):
            name, size = cells[0].strip("`"), float(cells[3].split()[0])
            pattern = re.match(r"(.*)\{([\d,]+)\}(.*)", name)
            names = [f"{pattern[1]}{k}{pattern[3]}" for k in pattern[2].split(",")] if pattern else [name]
            rows |= {n: size for n in names}
    return rows


def test_every_shipped_model_is_listed_once_with_its_size():
    files = tracked_files()
    models = {n: size for n, size in files.items() if n.endswith(".pt")}
    listed = listed_models()
    assert sorted(listed) == sorted(models)
    for name, size in models.items():
        assert listed[name] == round(size / 1e6, 1), name
    # stored once: no two shipped models are the same bytes
    contents = [open(os.path.join(ROOT, n), "rb").read() for n in models]
    assert len({hash(c) for c in contents}) == len(contents)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set:
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)  # no headings inside code blocks
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links(path: str) -> list:
    """Every Markdown link and image target of a file (outside code blocks), as written."""
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


DOCS = [
    "README.md",
    *sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/*.md")),
    *sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/lab/**/*.md", recursive=True)),
]


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_and_image_resolves(doc):
    path = os.path.join(ROOT, doc)
    for target in links(path):
        if re.match(r"[a-z]+://", target):
            continue  # the web: not checked without network
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        assert os.path.exists(resolved), f"{doc}: {target} does not exist"
        if anchor:
            assert resolved.endswith(".md") and anchor in anchors(resolved), f"{doc}: no heading for {target}"


def test_the_front_page_is_short_and_every_doc_is_reachable_from_it():
    readme = os.path.join(ROOT, "README.md")
    assert len(open(readme).read()) <= 15_000
    linked = {os.path.normpath(t.partition("#")[0]) for t in links(readme)}
    assert {d for d in DOCS if d.startswith("docs/")} | {"lab/README.md"} <= linked
    lab = os.path.join(ROOT, "lab", "README.md")  # the lab's page links every study's
    studies = {os.path.normpath(os.path.join("lab", t.partition("#")[0])) for t in links(lab)}
    assert {d for d in DOCS if re.fullmatch(r"lab/studies/\w+/README\.md", d)} <= studies
