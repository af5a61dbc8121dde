"""A user's code confined (core/access/sandbox.py): what it sees of the environment,
where it can write, whether it reaches the network, and its CPU and memory limits."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from core.access import sandbox

PROBE = '''
import json, os, socket

def probe(extra):
    """What user code can reach: it tries, and writes what happened to report.json in its working folder."""
    report = {"env": dict(os.environ), "cwd": os.getcwd(), **extra}
    for name, target in (("outside", TARGETS["outside"]), ("home", TARGETS["home"]), ("tmp", "/tmp/llmdev-escape.txt")):
        try:
            with open(target, "w") as fh:
                fh.write("escaped")
            report[name] = "written"
        except OSError as exc:
            report[name] = type(exc).__name__
    try:
        socket.create_connection(("127.0.0.1", TARGETS["port"]), timeout=3).close()
        report["connect"] = "connected"
    except OSError as exc:
        report["connect"] = type(exc).__name__
    try:
        report["proc_environ"] = open("/proc/1/environ", "rb").read().decode(errors="replace")
    except OSError as exc:
        report["proc_environ"] = type(exc).__name__
    report["database_visible"] = os.path.exists(TARGETS["database"])
    with open("report.json", "w") as fh:  # its own folder: allowed
        json.dump(report, fh)
'''

HOSTILE = PROBE + '''
def reward(prompts, completions, **kw):
    print("ENVIRONMENT", dict(os.environ), flush=True)
    probe({})
    return [0.0 for _ in completions]

def spin(**kw):
    while True:
        pass

def hog(**kw):
    return len(bytearray(64 * 2**30))
'''


class Listener:
    """A TCP port on this machine's loopback that counts who connects."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def hostile_file(folder: Path, outside: Path, home: Path, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    code = folder / "reward_file.py"
    targets = {"outside": str(outside), "home": str(home / "planted.txt"), "port": port, "database": str(home / "platform.db")}
    code.write_text(f"TARGETS = {json.dumps(targets)}\n" + HOSTILE)
    return code


def check_report(report: dict, outside: Path, home: Path, listener: Listener, lines: list[str]) -> None:
    """No secret visible; with isolation, the writes and the connect fail."""
    shown = json.dumps(report) + "\n".join(lines)
    for secret in ("DATABASE_URL", "pa55word-xyz", "OPENAI_API_KEY", "sk-live-0123456789", "LLMDEV_HOME"):
        assert secret not in shown, secret
    # only what sandbox.environment() gives (and, for lm-eval, its offline and cache settings), besides
    # the defaults the libraries loaded in the confined process set on import (lm_eval/__init__.py,
    # sklearn/__init__.py, torch's inductor cache): none of them comes from the worker's environment
    given = {"PATH", "LANG", "HOME", "TMPDIR", "OMP_NUM_THREADS", "PWD", "HF_DATASETS_OFFLINE",
             "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM"}
    set_on_import = {"HF_XET_HIGH_PERFORMANCE", "HF_HUB_ENABLE_HF_TRANSFER", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK",
                     "TORCHINDUCTOR_CACHE_DIR"}
    assert set(report["env"]) <= given | set_on_import, set(report["env"]) - given - set_on_import
    why = sandbox.isolation()
    if why is not None:
        pytest.skip(f"this machine cannot isolate user code's network and files: {why}")
    assert report["outside"] != "written" and not outside.exists()
    assert report["home"] != "written" and not (home / "planted.txt").exists()
    assert report["tmp"] != "written" and not Path("/tmp/llmdev-escape.txt").exists()
    assert report["connect"] != "connected" and listener.accepted == 0
    assert "pa55word" not in report["proc_environ"] and report["database_visible"] is False


@pytest.mark.fast
def test_a_hostile_reward_file_sees_no_secret_and_reaches_nothing(home, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://llm:pa55word-xyz@127.0.0.1:1/llm")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789")
    listener = Listener()
    folder, outside = tmp_path / "box", tmp_path / "outside.txt"
    code = hostile_file(folder, outside, home, listener.port)
    lines: list[str] = []
    with sandbox.Confined(code, "reward", folder, log=lines.append) as box:
        assert box.call(prompts=["p"], completions=["c"]) == [0.0]
    check_report(json.loads((folder / "report.json").read_text()), outside, home, listener, lines)


@pytest.mark.fast
def test_limits_name_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMDEV_USER_CODE_CPU_S", "1")
    monkeypatch.setenv("LLMDEV_USER_CODE_MEMORY_MB", "1024")
    folder = tmp_path / "box"
    code = hostile_file(folder, tmp_path / "x", tmp_path, 9)
    with sandbox.Confined(code, "spin", folder, log=lambda line: None) as box:
        with pytest.raises(sandbox.UserCodeError, match=r"used more than 1 s of CPU .*LLMDEV_USER_CODE_CPU_S") as err:
            box.call()
        assert err.value.limit == "cpu"
    with sandbox.Confined(code, "hog", folder, log=lambda line: None) as box:
        with pytest.raises(sandbox.UserCodeError, match=r"MemoryError.*1024 MB memory limit, LLMDEV_USER_CODE_MEMORY_MB") as err:
            box.call()
        assert err.value.limit == "memory" and err.value.line > 0
        # the process goes on after a failed call
        with pytest.raises(sandbox.UserCodeError, match="MemoryError"):
            box.call()
    broken = folder / "broken.py"
    broken.write_text("def reward(**kw):\n    x = 1\n    return 1 / 0\n")
    with sandbox.Confined(broken, "reward", folder, log=lambda line: None) as box:
        with pytest.raises(sandbox.UserCodeError, match=r"broken.py, line 3\): ZeroDivisionError") as err:
            box.call()
    with pytest.raises(sandbox.UserCodeError, match="defines no function `score`"):
        sandbox.Confined(broken, "score", folder, log=lambda line: None).start()


TASK_UTILS = PROBE + '''
def process_docs(dataset):
    probe({})
    return dataset
'''


def test_an_lm_eval_task_folder_runs_confined_and_scores_as_in_process(tiny_llama, home, tmp_path, monkeypatch):
    from core.evaluation import lm_eval
    from core.evaluation.lm_eval import EvalLmEvalSpec
    from core.inference import generate
    from core.jobs import lifecycle as jobs

    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789")
    listener = Listener()
    outside = tmp_path / "outside.txt"
    folder = tmp_path / "my_tasks" / "yes_no"
    folder.mkdir(parents=True)
    rows = [{"q": f"Is {n} even?", "label": n % 2} for n in range(6)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    targets = {"outside": str(outside), "home": str(home / "planted.txt"), "port": listener.port,
               "database": str(home / "platform.db")}  # as hostile_file writes them
    (folder / "utils.py").write_text(f"TARGETS = {json.dumps(targets)}\n" + TASK_UTILS)
    (folder / "yes_no.yaml").write_text(
        "task: my_yes_no\ndataset_path: json\ndataset_kwargs:\n  data_files: data.jsonl\ntest_split: train\n"
        "process_docs: !function utils.process_docs\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: ['yes', 'no']\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    job = jobs.wait(jobs.submit(EvalLmEvalSpec(model="tiny", tasks=["my_yes_no"], task_dir=str(tmp_path / "my_tasks"))),
                    timeout_s=300)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    # the same scores as the harness run in this process (on a twin folder whose function does nothing else)
    import shutil

    twin = tmp_path / "twin" / "yes_no"
    shutil.copytree(folder, twin)
    (twin / "utils.py").write_text("def process_docs(dataset):\n    return dataset\n")
    here = lm_eval.run_tasks(*generate.load(tiny_llama), ["my_yes_no"], include_paths=[tmp_path / "twin"])
    assert job.result["metrics"] == pytest.approx(here["metrics"]) and job.result["num_samples"] == 6
    report = json.loads((jobs.run_dir(job.id) / sandbox.FOLDER / "report.json").read_text())
    assert report["cwd"] == str(jobs.run_dir(job.id) / sandbox.FOLDER)
    check_report(report, outside, home, listener, jobs.read_log_tail(job.id, 500).splitlines())
