"""A user's code (a reward file, an lm-eval task's functions) in its own confined process.

    with sandbox.Confined(Path("reward_file.py"), "reward", folder) as box:
        scores = box.call(prompts=[...], completions=[...])

The process it runs in (core/access/sandbox_child.py on the other end of a pipe):
  - a scrubbed environment: PATH, LANG, and HOME and TMPDIR in its folder; no
    DATABASE_URL, no API key or token of the job's;
  - its own folder as working directory;
  - limits: LLMDEV_USER_CODE_CPU_S seconds of CPU per call (default 60; also a wall
    clock of 3x that, at least 30 s), LLMDEV_USER_CODE_MEMORY_MB of address space
    (default 4096), files of at most 1 GB; a call over a limit fails naming it;
  - with bubblewrap (Debian's `bubblewrap`, `bwrap`): no network at all (a new network
    namespace), no other process in sight (a new PID namespace: it cannot read the
    job's environment from /proc), a read-only view of the system and of Python, and
    no data home, no app folder and no home folder: its own folder is the only one it
    sees of those, and the only place it can write.
Without bubblewrap the first three hold and `isolation()` says what is missing; once
sign-in is on (an account exists) user code is then refused: by the app at submit
(core/jobs/lifecycle) and here, wherever it would start (a worker, a Ray node, "Try
it"), unless whoever starts that process set LLMDEV_USER_CODE_UNCONFINED=1 (their
machine, their risk). With no account (a laptop's single user) it runs unconfined.

What this does not stop: reading what the system and Python's folders hold (they
are readable to the job's user anyway), using the CPU and memory up to the limits
(the CPU limit is a soft one the code could raise: the wall clock then ends it),
starting many processes (no count limit: each gets the memory limit), and, without
bubblewrap, the network and writes anywhere the job's user may write. A GPU stays
visible (/dev/nvidia*, /dev/dri), so a task's model can run on it.
"""

from __future__ import annotations

import glob
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

CHILD = Path(__file__).with_name("sandbox_child.py")
FOLDER = "user_code"
"""The folder of a run where its user code runs (and may write): runs/<id>/user_code."""
SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")


class UserCodeError(ValueError):
    """The user's code failed or went over a limit; the message says which, and where."""

    def __init__(self, message: str, line: int = 0, limit: str = "", what: str = "", file: str = ""):
        super().__init__(message)
        self.line, self.limit, self.file = line, limit, file
        self.what = what or message
        """The error alone, without who and where ("ZeroDivisionError: division by zero")."""


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be more than 0")
    return value


def cpu_s() -> float:
    return _number("LLMDEV_USER_CODE_CPU_S", 60.0)


def memory_mb() -> int:
    return int(_number("LLMDEV_USER_CODE_MEMORY_MB", 4096.0))


_isolation: list[Optional[str]] = []


def isolation() -> Optional[str]:
    """None when user code can be fully confined here (bubblewrap works), else why not."""
    if not _isolation:
        why = None
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            why = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
        else:
            try:
                done = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                                      capture_output=True, text=True, timeout=20)
                if done.returncode != 0:
                    why = f"bubblewrap cannot make namespaces here: {done.stderr.strip()[:200]}"
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = f"bubblewrap does not run here: {exc}"
        _isolation.append(why)
    return _isolation[0]


def command(folder: Path, python_args: list[str], read_only: tuple[Path, ...] = ()) -> list[str]:
    """The command that runs `python python_args...` confined to `folder` (bubblewrap
    when it works here, else the interpreter alone)."""
    python = [sys.executable, "-I", "-B", *python_args]  # -I: no PYTHON* variables, no user site; -B: no .pyc written
    if isolation() is not None:
        why = refusal()
        if why is not None:
            raise UserCodeError(why, limit="confinement")
        return python
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
           "--proc", "/proc", "--dev", "/dev"]
    for path in SYSTEM:
        cmd += ["--ro-bind-try", path, path]
    seen = set()
    for path in (sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)), *map(str, read_only)):
        if path not in seen:
            seen.add(path)
            cmd += ["--ro-bind", path, path]
    for device in sorted(glob.glob("/dev/nvidia*")) + ["/dev/dri"]:  # a GPU stays usable (an lm-eval task's model)
        cmd += ["--dev-bind-try", device, device]
    cmd += ["--bind", str(folder), str(folder), "--remount-ro", "/", "--chdir", str(folder), "--"]
    return cmd + python


def refusal() -> Optional[str]:
    """Why user code may not run here, or None: it cannot be confined (`isolation`), the
    platform is shared (sign-in is on) and whoever started this process did not take the
    risk (LLMDEV_USER_CODE_UNCONFINED=1). The one rule for the app at submit and for
    every process that would start user code (see the top)."""
    why = isolation()
    if why is None or os.environ.get("LLMDEV_USER_CODE_UNCONFINED", "").strip() == "1":
        return None
    from core.access import accounts

    if not accounts.sign_in_on():
        return None
    return (f"this machine cannot confine user code ({why}), and sign-in is on, so it does not run it: "
            "install bubblewrap where the job runs (or set LLMDEV_USER_CODE_UNCONFINED=1 there)")


def environment(folder: Path) -> dict[str, str]:
    """All the environment user code gets."""
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(folder), "TMPDIR": str(folder / "tmp"),
            "OMP_NUM_THREADS": "1"}


def start(folder: Path, python_args: list[str], read_only: tuple[Path, ...] = (),
          extra_env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """A confined `python python_args...` with pipes on stdin, stdout and stderr (the
    program sets its own memory limit first: sandbox_child.limit_memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        command(folder, python_args, read_only), cwd=folder, env={**environment(folder), **(extra_env or {})},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
    )


def stop(proc: subprocess.Popen) -> None:
    """Kill a confined process (its whole group) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def died(proc: subprocess.Popen, memory: int, last_lines: list[str]) -> str:
    """Why a confined process ended without answering, in words."""
    code = proc.poll()
    said = f": {last_lines[-1]}" if last_lines else ""
    if code is not None and (code < 0 or code > 128):
        sig = -code if code < 0 else code - 128
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        return (f"it was stopped by {name} (over the {memory} MB memory limit, LLMDEV_USER_CODE_MEMORY_MB, "
                f"or the CPU limit, LLMDEV_USER_CODE_CPU_S?){said}")
    return f"it ended (exit code {code}) without answering{said}"


class Confined:
    """One function of a user's Python file, called from here, run in a confined
    process (see the module) that lives as long as this object (`with` closes it)."""

    def __init__(self, code: Path, function: str, folder: Path, *, label: str = "your code",
                 log: Optional[Callable[[str], None]] = None):
        self.code, self.function, self.folder, self.label = Path(code), function, Path(folder), label
        self.cpu_s, self.memory = cpu_s(), memory_mb()
        self.wall_s = max(30.0, 3 * self.cpu_s)
        self.log = log or (lambda line: print(f"[{label}] {line}", file=sys.stderr, flush=True))
        self.tail: deque[str] = deque(maxlen=20)
        self.answers: queue.Queue = queue.Queue()  # one per process started: a dead one's end is not the next one's
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Confined":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.proc = start(self.folder, [str(CHILD), str(self.memory)], read_only=(CHILD,))
        self.answers = queue.Queue()
        threading.Thread(target=self._pump_answers, args=(self.proc, self.answers), daemon=True).start()
        threading.Thread(target=self._pump_log, args=(self.proc,), daemon=True).start()
        self._ask({"load": str(self.code), "function": self.function, "cpu_s": self.cpu_s})

    def call(self, **kwargs: Any) -> Any:
        """The function's return value for these keyword arguments (plain data: they
        are sent as JSON), or UserCodeError naming what went wrong."""
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self.start()  # a call that went over a limit took the process with it
        return self._ask({"call": kwargs})

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            stop(self.proc)
            self.proc = None

    def _ask(self, request: dict) -> Any:
        try:
            self.proc.stdin.write((json.dumps(request, default=str) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the answer says how
        try:
            answer = self.answers.get(timeout=self.wall_s)
        except queue.Empty:
            stop(self.proc)
            raise UserCodeError(f"{self.label} did not answer within {self.wall_s:g} s (the wall-clock limit, 3x "
                                f"LLMDEV_USER_CODE_CPU_S)", limit="time") from None
        if answer is None:
            self.proc.wait(10)
            raise UserCodeError(f"{self.label} {died(self.proc, self.memory, list(self.tail))}", limit="died")
        if "error" in answer:
            line = int(answer.get("line") or 0)
            where = f" ({self.code.name}, line {line})" if line else ""
            limit = answer.get("limit", "")
            why = {"cpu": f" (LLMDEV_USER_CODE_CPU_S={self.cpu_s:g} per call)",
                   "memory": f" (over the {self.memory} MB memory limit, LLMDEV_USER_CODE_MEMORY_MB)"}.get(limit, "")
            raise UserCodeError(f"{self.label} failed{where}: {answer['error']}{why}", line=line, limit=limit,
                                what=f"{answer['error']}{why}", file=self.code.name)
        return answer["ok"]

    @staticmethod
    def _pump_answers(proc: subprocess.Popen, answers: queue.Queue) -> None:
        for raw in proc.stdout:
            try:
                answers.put(json.loads(raw))
            except ValueError:
                continue
        answers.put(None)

    def _pump_log(self, proc: subprocess.Popen) -> None:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            self.log(line)
