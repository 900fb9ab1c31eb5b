"""Generate the API reference pages at build time (mkdocs-gen-files), one page per module of ``src/vesalius``.

Walks the package tree, so a module renamed, added or removed needs no edit here; ``__main__`` is skipped. Each page
is one ``::: module`` directive for mkdocstrings, which reads the source statically (griffe: nothing is imported, so a
module that fails to import still gets its page). The navigation goes to ``reference/SUMMARY.md`` (mkdocs-literate-nav).
The benchmark results (``benchmarks/RESULTS.md``) are copied in as ``results.md`` so that the site has them too.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "vesalius"

nav = mkdocs_gen_files.Nav()
for path in sorted(PACKAGE.rglob("*.py")):
    module = path.relative_to(SRC).with_suffix("")
    parts = tuple(module.parts)
    if parts[-1] == "__main__" or any(part.startswith(".") or part == "node_modules" for part in parts):
        continue
    doc_path = Path(*parts).with_suffix(".md")
    if parts[-1] == "__init__":
        parts = parts[:-1]
        doc_path = Path(*parts, "index.md")
    nav[parts] = doc_path.as_posix()
    with mkdocs_gen_files.open(Path("reference", doc_path), "w") as page:
        page.write(f"::: {'.'.join(parts)}\n")
    mkdocs_gen_files.set_edit_path(Path("reference", doc_path), path.relative_to(ROOT))

with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
    summary.writelines(nav.build_literate_nav())

results = ROOT / "benchmarks" / "RESULTS.md"
with mkdocs_gen_files.open("results.md", "w") as page:
    page.write(results.read_text(encoding="utf-8") if results.is_file() else "# Benchmark results\n\nNone yet.\n")
