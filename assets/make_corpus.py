"""Rebuild assets/corpus.txt: English prose from the Python standard library's
docstrings (PSF licence), the local corpus scratch tokenizers are trained on.

    python assets/make_corpus.py
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

MODULES = sorted(
    m.name for m in pkgutil.iter_modules() if not m.name.startswith("_") and m.module_finder.path.endswith("python3.11")
)


def paragraphs(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    out = []
    for para in re.split(r"\n\s*\n", doc):
        text = " ".join(para.split())
        # prose only: sentences, not signatures, tables or code
        if len(text) > 80 and text[0].isupper() and text.endswith(".") and ">>>" not in text:
            out.append(text)
    return out


def main() -> None:
    seen, chunks = set(), []
    for name in MODULES:
        if name in ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        for obj in [mod] + [v for _, v in inspect.getmembers(mod) if inspect.isclass(v) or inspect.isfunction(v)]:
            for p in paragraphs(obj):
                if p not in seen:
                    seen.add(p)
                    chunks.append(p)
    text = "\n\n".join(chunks)[:400_000]
    Path(__file__).with_name("corpus.txt").write_text(text + "\n", encoding="utf-8")
    print(f"{len(chunks)} paragraphs, {len(text)} characters")


if __name__ == "__main__":
    main()
