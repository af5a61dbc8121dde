"""The confined process's side of core/access/sandbox.py (standard library only: it
imports nothing of the platform, and runs with `python -I`).

Protocol, one JSON object per line: the parent writes {"load": FILE, "function":
NAME, "cpu_s": S} and then {"call": {keyword arguments}} as often as it likes; this
answers each with {"ok": VALUE} or {"error": TEXT, "line": N, "limit": WHICH}. The
answers go to the stdout it started with; the user's prints go to stderr (the job's
log), so a print can never be taken for an answer.
"""

import importlib.util
import json
import math
import os
import resource
import signal
import sys
import traceback
import types


class CPULimit(BaseException):
    """Raised in the user's code when a call has used its CPU seconds (SIGXCPU)."""


def _on_xcpu(signum, frame):
    raise CPULimit()


def _used_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_budget(seconds: float) -> None:
    """SIGXCPU once this process has used `seconds` more CPU from now."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(_used_cpu() + seconds)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _line_in(path, exc) -> int:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) == path]
    return frames[-1].lineno if frames else 0


def _jsonable(value):
    """NaN and infinities as null (a reward of None: TRL's "no score")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # a numpy or torch value, if the user's code made one
        return _jsonable(value.tolist())
    return value


def limit_memory(megabytes: int) -> None:
    """Address space and file size limits, set before any user code runs."""
    resource.setrlimit(resource.RLIMIT_AS, (megabytes * 2**20, megabytes * 2**20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**30, 2**30))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> int:
    limit_memory(int(sys.argv[1]))
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # print() in the user's code goes to the log
    signal.signal(signal.SIGXCPU, _on_xcpu)
    func, path, cpu_s = None, "", 60.0
    for raw in sys.stdin:
        request = json.loads(raw)
        try:
            if "load" in request:
                path, cpu_s = os.path.realpath(request["load"]), float(request["cpu_s"])
                sys.path.insert(0, os.path.dirname(path))  # its helper modules beside it
                _cpu_budget(cpu_s)
                spec = importlib.util.spec_from_file_location("user_code", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                func = getattr(module, request["function"], None)
                if not callable(func):
                    raise NameError(f"it defines no function `{request['function']}`")
                reply = {"ok": True}
            else:
                _cpu_budget(cpu_s)
                kwargs = request["call"]
                if isinstance(kwargs.get("trainer_state"), dict):  # read as in TRL: trainer_state.global_step
                    kwargs["trainer_state"] = types.SimpleNamespace(**kwargs["trainer_state"])
                reply = {"ok": _jsonable(func(**kwargs))}
        except CPULimit:
            reply = {"error": f"it used more than {cpu_s:g} s of CPU", "limit": "cpu"}
        except MemoryError as exc:
            reply = {"error": f"MemoryError: {exc}", "limit": "memory", "line": _line_in(path, exc)}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}", "line": _line_in(path, exc)}
            traceback.print_exc()
        try:
            answers.write(json.dumps(reply) + "\n")
        except (TypeError, ValueError) as exc:
            answers.write(json.dumps({"error": f"it returned something that is not plain data (numbers, text, lists): {exc}"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
