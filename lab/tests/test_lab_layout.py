"""The layout says what each part is for: the product at the top, the lab in lab/, one folder per study with its
README, and the study READMEs' commands naming files and flags that exist."""

import glob
import os
import re
import shlex
import subprocess

import pytest

from conftest import ROOT

PRODUCT = {"o3f_lapo.py", "o3f_iql.py", "iql_noise.py", "cql_to_sac.py", "awac.py", "make_datasets.py"}
TOP = PRODUCT | {"README.md", "requirements.txt", "pyproject.toml", ".gitignore", ".ci", "tests", "docs", "datasets"}
SECTIONS = ("Question", "Rule", "Commands", "Verdict", "Figures")
STUDIES = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "lab", "studies", "*", "")))


def tracked_top_level() -> set:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {name.split("/")[0] for name in out.splitlines()}


def test_the_top_level_is_the_product_and_one_lab_folder():
    assert tracked_top_level() == TOP | {"lab"}


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_folder_has_a_readme_with_its_sections_in_order(study):
    text = open(os.path.join(ROOT, "lab", "studies", study, "README.md")).read()
    headings = re.findall(r"^## (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    found = [next((h for h in headings if h.split(" (")[0].replace("The rule", "Rule") == s), None) for s in SECTIONS]
    assert None not in found, f"{study}: missing {[s for s, h in zip(SECTIONS, found) if h is None]}"
    assert [headings.index(h) for h in found] == sorted(headings.index(h) for h in found), study


def test_the_lab_readme_lists_every_study():
    text = open(os.path.join(ROOT, "lab", "README.md")).read()
    assert {s for s in STUDIES if f"(studies/{s}/README.md)" not in text} == set()


def commands(path: str) -> list:
    """The shell commands in a Markdown file's bash blocks, continuation lines joined, comments dropped."""
    text = open(path).read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split("  #")[0].strip() for line in lines if line.strip() and not line.strip().startswith("#")]


DOCUMENTED = sorted(
    {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "lab", "**", "*.md"), recursive=True)}
)


@pytest.mark.parametrize("doc", ["README.md", *DOCUMENTED, *sorted(glob.glob("docs/*.md", root_dir=ROOT))])
def test_every_documented_command_names_files_that_exist(doc):
    """Each `python X.py` or `bash X.sh` of a documented command is a file of the repository, at its new place."""
    for command in commands(os.path.join(ROOT, doc)):
        for word in shlex.split(command.replace("$", "")):
            if re.fullmatch(r"(lab/|tests/)?[\w/.-]+\.(py|sh)", word) and not word.startswith(("/", "d3rlpy-env")):
                assert os.path.isfile(os.path.join(ROOT, word)), f"{doc}: {command}"
