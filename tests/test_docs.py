"""The docs cannot drift: the CLI reference is generated from the parser and up to date, every
option is documented, every command in the docs parses, and no relative link is broken."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cryotiff.cli import build_parser

REPOSITORY = Path(__file__).resolve().parents[1]
DOCS = REPOSITORY / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [REPOSITORY / "README.md"]
REQUIRED_PAGES = ["index.md", "user-guide.md", "conventions.md", "cli-reference.md", "differences-from-relion.md"]


def load_reference_script():
    spec = importlib.util.spec_from_file_location("make_cli_reference", REPOSITORY / "scripts" / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_option_strings() -> list[str]:
    return [name for action in build_parser()._actions for name in action.option_strings]


def test_the_pages_exist() -> None:
    assert set(REQUIRED_PAGES) <= {p.name for p in DOCS.glob("*.md")}


def test_cli_reference_is_up_to_date() -> None:
    expected = load_reference_script().render()
    assert (DOCS / "cli-reference.md").read_text() == expected, (
        "docs/cli-reference.md is out of date: run python scripts/make_cli_reference.py"
    )


@pytest.mark.parametrize("option", all_option_strings())
def test_every_option_is_documented_with_help(option: str) -> None:
    assert f"`{option}`" in (DOCS / "cli-reference.md").read_text()
    action = build_parser()._option_string_actions[option]
    assert action.help, f"{option} has no help text"


def test_the_check_mode_of_the_script() -> None:
    completed = subprocess.run([sys.executable, str(REPOSITORY / "scripts" / "make_cli_reference.py"), "--check"],
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def documented_commands() -> list[tuple[str, str]]:
    commands = []
    for page in PAGES:
        for block in code_blocks(page.read_text()):
            for line in block.splitlines():
                if line.startswith("convert-to-tiff "):
                    commands.append((page.name, line.split(" #")[0]))
    return commands


@pytest.mark.parametrize("page, command", documented_commands())
def test_every_documented_command_parses(page: str, command: str) -> None:
    build_parser().parse_args(shlex.split(command)[1:])  # exits (a test failure) on an unknown option


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE)}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # not http:, mailto: ...


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_broken_relative_links(page: Path) -> None:
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        assert destination.exists(), f"{page.name}: link to missing {target}"
        if anchor:
            assert destination.suffix == ".md", f"{page.name}: anchor into a non-Markdown file: {target}"
            assert anchor in anchors(destination), f"{page.name}: no heading for #{anchor} in {destination.name}"


def test_the_link_checker_finds_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n## A section, with commas\n")
    page.write_text("[ok](other.md#a-section-with-commas) [bad](other.md#nowhere) [gone](missing.md) "
                    "[web](https://example.org) `[code](not-a-link.md)`\n")
    assert relative_links(page) == ["other.md#a-section-with-commas", "other.md#nowhere", "missing.md"]
    assert "a-section-with-commas" in anchors(tmp_path / "other.md")
    assert "nowhere" not in anchors(tmp_path / "other.md")


@pytest.mark.parametrize("columns", [60, 80, 120, 200])
def test_help_wraps_at_one_width(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The description and every option's help wrap at the terminal's width, at most
    HELP_MAX_WIDTH columns (a pre-wrapped description would stick out on a narrow terminal)."""
    from cryotiff.cli import DESCRIPTION, HELP_MAX_WIDTH

    monkeypatch.setenv("COLUMNS", str(columns))
    text = build_parser().format_help()
    width = min(columns, HELP_MAX_WIDTH) - 2
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long
    first_words = " ".join(DESCRIPTION.split()[:6])
    description = text[text.index(first_words):].split("\n\n")[0].splitlines()
    assert len(description) > 1 and max(len(line) for line in description) > width - 15  # wrapped, not raw


def test_help_spells_reliability_right() -> None:
    """Only the file name keeps RELION's spelling (gain_estimate_reliablity.bin)."""
    for action in build_parser()._actions:
        text = action.help or ""
        assert "reliablity" not in text.replace("_reliablity", ""), action.option_strings


#: Citations a maintainer cannot open: the project's internal reference material, its sections and
#: its private words. Code and docs cite RELION's source files and docs pages, and the project's
#: docs (docs/relion-behaviour.md holds the RELION facts) instead.
UNOPENABLE_CITATIONS = {
    "a numbered section of a specification": r"(?i)\bspec(ification)?\s*(\(\s*)?(sections?\s*)?\d",
    "'the spec'": r"(?i)\bthe spec\b",
    "'the seed page'": r"(?i)\bseed page",
    "'the issue's ...'": r"(?i)\bthe issue'?s\b",
    "a file outside the repository": r"/work/|\bshared/(reference|design)\b",
}


def citation_sources() -> list[Path]:
    files = [REPOSITORY / "README.md"]
    for folder in ("src", "docs", "benchmarks", "scripts", "tests"):
        files += [p for p in (REPOSITORY / folder).rglob("*") if p.suffix in (".py", ".md")]
    return sorted(p for p in files if p != Path(__file__).resolve() and ".egg-info" not in str(p))


def test_code_and_docs_cite_only_what_a_maintainer_can_open() -> None:
    found = []
    for path in citation_sources():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            for what, pattern in UNOPENABLE_CITATIONS.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(REPOSITORY)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_citation_check_finds_them() -> None:
    for line in ("the table (spec 11.4) says", "see spec section 5", "the seed page's example", "the issue's goals",
                 "(`/work/shared/reference/x.md`)", "# The checked example of the specification (section 14.5)"):
        assert any(re.search(p, line) for p in UNOPENABLE_CITATIONS.values()), line
    for line in ("EER specification", "importlib.util.module_from_spec(spec)", "the specimen", "RELION issue #1107",
                 ". /shared/cryotiff/.venv/bin/activate"):
        assert not any(re.search(p, line) for p in UNOPENABLE_CITATIONS.values()), line
