"""README.md's relative links and pictures resolve inside the repository (a fresh clone shows
every picture: they live in docs/, never in the git-ignored results/)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _targets(text: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in links if not re.match(r"[a-z]+://|#|mailto:", t)]


def test_readme_links_and_images_resolve_inside_the_repository():
    text = (ROOT / "README.md").read_text()
    targets = [t for t in _targets(text) if t]
    assert "docs/timedistributed.png" in targets  # the parser finds the pictures
    for target in targets:
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT), f"{target} points outside the repository"
        assert path.exists(), f"{target} does not exist"
        assert "results" not in path.relative_to(ROOT).parts, f"{target} is git-ignored output"
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert image.startswith("docs/"), f"picture {image} must live in docs/"
