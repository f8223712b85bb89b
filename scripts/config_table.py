"""Print the README's configuration table from Settings (``python -m scripts.config_table``)."""

from __future__ import annotations

from settings import Settings


def table() -> str:
    """Markdown rows: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, doc in Settings.describe():
        lines.append(f"| `{name}` | `{default}` | {doc} |" if default else f"| `{name}` | (empty) | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
