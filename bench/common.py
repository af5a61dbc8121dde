"""What the bench scripts share: a temporary data home with the starter model
(and the sample instructions), and appending results to bench/README.md."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "assets" / "samples" / "instructions.jsonl"


def starter_home(prefix: str) -> Path:
    """A fresh data home (SQLite) holding the converted starter as 'starter' and
    DATA imported as 'instructions'; this process and its jobs use it."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(LLMDEV_HOME=str(home), LLMDEV_AUTO_STARTER="0", TOKENIZERS_PARALLELISM="false")
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))
    from core.data.importer import ImportDatasetSpec
    from core.jobs import lifecycle as jobs
    from core.models.starter import AddStarterSpec

    for spec in (AddStarterSpec(name="starter"), ImportDatasetSpec(path=str(DATA), name="instructions")):
        job = jobs.wait(jobs.submit(spec), timeout_s=1800)
        assert job.status == "succeeded", job.log_tail
    return home


def record(section: str, text: str) -> None:
    """Append the results at the end of this benchmark's section of bench/README.md."""
    readme = ROOT / "bench" / "README.md"
    content = readme.read_text()
    if section not in content:
        raise SystemExit(f"bench/README.md has no section {section!r}")
    start = content.index(section) + len(section)
    end = content.find("\n## ", start)
    end = len(content) if end < 0 else end
    readme.write_text(content[:end].rstrip("\n") + "\n" + text + "\n" + content[end:])


def publish(section: str, lines: list[str], save: bool = True) -> None:
    """Print a run's results and (unless told not to) append them to its section."""
    text = "\n".join(lines)
    print(text)
    if save:
        record(section, text)
