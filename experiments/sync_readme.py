"""Copy result tables into the README and docs/, so their numbers are exactly what the scripts wrote.

    python experiments/sync_readme.py

In README.md and every docs/**/*.md, each block `<!-- from results/NAME.md -->` ... `<!-- end results/NAME.md -->`
is replaced by that file without its `# ` title line. Fails if a named file is missing.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- from (results/[\w.\-/]+\.md) -->\n)(.*?)(<!-- end \2 -->)", re.S)


def body(path: Path) -> str:
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip("\n") + "\n"


def sync(readme: Path, root: Path = ROOT) -> int:
    """Refill every block of `readme` from the files it names (relative to `root`); returns the count."""
    text = readme.read_text()
    count = 0

    def fill(m: re.Match) -> str:
        nonlocal count
        count += 1
        return m.group(1) + body(root / m.group(2)) + m.group(4)

    readme.write_text(BLOCK.sub(fill, text))
    return count


if __name__ == "__main__":
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        print(f"{page.relative_to(ROOT)}: {sync(page)} block(s) updated")
