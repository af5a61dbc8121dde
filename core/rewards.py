"""GRPO's reward functions, each in TRL's signature
`reward(prompts, completions, completion_ids, **columns) -> list[float]`:

    length    1 - |tokens - target| / target, at least 0: answers near a target length
    format    1 if the answer matches a regular expression, else 0
    contains  the share of the given keywords the answer contains (case-insensitive)
    avoids    1 minus the share of the given keywords it contains
    match     1 if the answer equals the row's `answer` column (exact: the text; numeric: the last number)
    file      a Python file of the user's defining `reward(prompts, completions, **columns)`
    model     a registered reward model's score (core/inference/reward.py)

A user's file never runs in the app nor in the job's own process: it runs confined
(core/access/sandbox.py: scrubbed environment, its own folder, CPU and memory
limits, no network) and is called with the arguments TRL passes, as plain data:

    prompts          what the policy was asked: a list of chat messages
                     [{"role": "user", "content": ...}] per prompt when the policy
                     has a chat template, else a string (the instruction layout)
    completions      its answers, the same way: [{"role": "assistant", "content": ...}]
                     or a string (text_of() reads either)
    completion_ids   each answer's token ids (a list of ints)
    trainer_state    global_step, max_steps and epoch (attributes)
    <column>         each other column of the prompt data set, one value per answer
                     (e.g. answer: the reference text)

It returns one float per completion (None: no reward for that one). "Try it on 3
rows" (core/training/grpo.py `try_rewards`) calls it exactly so, on answers the
policy writes.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from core.jobs.run import BadInput

TRY_ROWS = 3


def text_of(completion: Any) -> str:
    """A completion as text: TRL passes a string, or a list of messages for chat prompts."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _named(name: str, func: Callable) -> Callable:
    func.__name__ = name  # TRL names the reward's metrics after it: rewards/<name>/mean
    return func


def length(target: int) -> Callable:
    def reward(prompts, completions, completion_ids, **_):
        return [max(0.0, 1.0 - abs(len(ids) - target) / target) for ids in completion_ids]

    return _named("length", reward)


def format_match(pattern: str) -> Callable:
    compiled = re.compile(pattern)

    def reward(prompts, completions, **_):
        return [1.0 if compiled.search(text_of(c)) else 0.0 for c in completions]

    return _named("format", reward)


def contains(words: list[str]) -> Callable:
    low = [w.lower() for w in words]

    def reward(prompts, completions, **_):
        return [sum(w in text_of(c).lower() for w in low) / len(low) for c in completions]

    return _named("contains", reward)


def avoids(words: list[str]) -> Callable:
    low = [w.lower() for w in words]

    def reward(prompts, completions, **_):
        return [1.0 - sum(w in text_of(c).lower() for w in low) / len(low) for c in completions]

    return _named("avoids", reward)


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> Optional[float]:
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def match(how: str) -> Callable:
    def reward(prompts, completions, answer=None, **_):
        out = []
        for completion, expected in zip(completions, answer or [None] * len(completions)):
            text = text_of(completion).strip()
            if expected is None:
                out.append(0.0)
            elif how == "numeric":
                got, want = last_number(text), last_number(str(expected))
                out.append(1.0 if got is not None and want is not None and abs(got - want) < 1e-6 else 0.0)
            else:
                out.append(1.0 if text.lower() == str(expected).strip().lower() else 0.0)
        return out

    return _named("match", reward)


def from_file(path: Path, folder: Path) -> Callable:
    """The `reward` function of a user's file, run confined in `folder` (where the
    file is copied: the only place it sees of the run)."""
    import atexit

    from core.access import sandbox

    folder.mkdir(parents=True, exist_ok=True)
    code = folder / "reward_file.py"
    if Path(path).resolve() != code.resolve():
        shutil.copyfile(path, code)
    box = sandbox.Confined(code, "reward", folder, label="your reward file")
    box.start()  # a file that does not load fails here, before any training
    atexit.register(box.close)

    def reward(prompts, completions, trainer_state=None, **columns):
        columns = {k: v for k, v in columns.items() if k not in NOT_DATA}
        state = None if trainer_state is None else {
            "global_step": trainer_state.global_step, "max_steps": trainer_state.max_steps, "epoch": trainer_state.epoch}
        values = box.call(prompts=prompts, completions=completions, trainer_state=state, **columns)
        if not isinstance(values, list) or len(values) != len(completions):
            got = f"{len(values)} rewards" if isinstance(values, list) else f"a {type(values).__name__}"
            raise ValueError(f"it returned {got} for {len(completions)} completions (a list: one float or None per completion)")
        return [None if v is None else float(v) for v in values]

    reward.close = box.close  # the process ends with the job; a short-lived caller closes it sooner
    return _named("file", reward)


NOT_DATA = ("log_extra", "log_metric", "environments")
"""What TRL passes a reward function that is not data (callables, live objects): kept from user code."""


def from_model(model, tokenizer) -> Callable:
    """A registered reward model's score of each (prompt, completion), as it was trained."""
    from core.inference import reward as scoring

    def reward(prompts, completions, **_):
        return scoring.score(model, tokenizer, list(zip(prompts, completions)), formatted=True)

    return _named("model", reward)


def build(spec: Any, folder: Path, reward_model_row=None) -> tuple[list, list[float], dict[str, Any]]:
    """(functions, weights, what to record about them) for the rewards a spec
    switches on (a GRPO spec: its reward_names() and their settings). A user's
    file is copied into `folder` (the run's) and runs from there."""
    funcs, facts = [], {}
    for name in spec.reward_names():
        if name == "length":
            funcs.append(length(spec.target_length))
        elif name == "format":
            funcs.append(format_match(spec.format_regex))
        elif name == "contains":
            funcs.append(contains(spec.contains))
        elif name == "avoids":
            funcs.append(avoids(spec.avoids))
        elif name == "match":
            funcs.append(match(spec.match))
        elif name == "file":
            path = Path(spec.reward_file).expanduser()
            copy = folder / "reward_file.py"
            shutil.copyfile(path, copy)  # the code this run used, next to it (out of the user code's reach)
            facts["reward_file"] = {"path": str(path), "sha256": file_hash(copy), "copy": str(copy)}
            print(f"reward file {path} (sha256 {facts['reward_file']['sha256']})", flush=True)
            from core.access import sandbox

            funcs.append(from_file(copy, folder / sandbox.FOLDER))
        elif name == "model":
            from core.inference import reward as scoring

            model, tokenizer = scoring.load(reward_model_row)
            facts["reward_model"] = {"id": reward_model_row.id, "name": reward_model_row.name}
            funcs.append(from_model(model, tokenizer))
    return funcs, [spec.reward_weights.get(name, 1.0) for name in spec.reward_names()], facts


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RewardFailed(BadInput):
    """A reward function raised during training: which one, at which step, where
    in the user's file (the traceback goes to the job log)."""

    def __init__(self, name: str, state: Any, exc: Exception):
        step = state.global_step + 1 if state is not None else "?"
        from core.access.sandbox import UserCodeError

        if isinstance(exc, UserCodeError):  # the confined file's own words: where and what
            where = f" ({exc.file}, line {exc.line})" if exc.line else ""
            super().__init__(f"the {name} reward failed at step {step}{where}: {exc.what}")
            return
        super().__init__(f"the {name} reward failed at step {step}: {type(exc).__name__}: {exc}")


class Recorder:
    """Wraps the reward functions so each generation's rollouts (prompt,
    completion, every function's reward, the weighted total) can be stored for
    the step they trained: `take()` returns and clears them."""

    def __init__(self, funcs: list[Callable], weights: list[float], keep: int = 8):
        self.weights, self.keep = weights, keep
        self.names = [f.__name__ for f in funcs]
        self.rows: list[dict[str, Any]] = []
        self.wrapped = [self._wrap(f, first=i == 0) for i, f in enumerate(funcs)]

    def _wrap(self, func: Callable, first: bool) -> Callable:
        def reward(prompts, completions, **kw):
            try:
                values = func(prompts=prompts, completions=completions, **kw)
            except Exception as exc:
                raise RewardFailed(func.__name__, kw.get("trainer_state"), exc) from exc
            if first:  # TRL calls the functions in order on the same rollouts
                answers = kw.get("answer") or [None] * len(prompts)
                self.rows = [{"prompt": p, "output": text_of(c), "reference": a, "scores": {}}
                             for p, c, a in list(zip(prompts, completions, answers))[: self.keep]]
            for row, value in zip(self.rows, values):
                row["scores"][func.__name__] = value
            return values

        return _named(func.__name__, reward)

    def take(self) -> list[dict[str, Any]]:
        rows, self.rows = self.rows, []
        for i, row in enumerate(rows):
            values = [row["scores"].get(n) for n in self.names]
            if all(v is not None for v in values):
                row["scores"]["total"] = sum(w * v for w, v in zip(self.weights, values))
            row["idx"] = i
            if isinstance(row["prompt"], list):  # a conversation: the question asked
                row["prompt"] = text_of(row["prompt"][-1:])
        return rows
