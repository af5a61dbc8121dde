"""LLM-as-judge: rubrics, the two kinds of judge, reading their grades, and the
evaluation job that puts them together.

    python -m core eval judge --model NAME --dataset NAME --judge-model NAME
    JUDGE_API_KEY=... python -m core eval judge --model NAME --dataset NAME --judge-url http://127.0.0.1:8000/v1 --judge-api-key-env JUDGE_API_KEY

A rubric is a stored, editable prompt with {question}, {reference} and {answer}
in it and a score scale. The judge is a registered model (run here) or any
OpenAI-compatible chat endpoint (`POST <url>/chat/completions`), this
platform's own server included. A reply the grade cannot be read from is a
*parse failure*: counted and kept with the reply, never dropped.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from pydantic import Field, model_validator
from sqlalchemy import select

from core.access import outbound
from core.access.masking import one_line
from core.evaluation.common import evaluate_targets
from core.evaluation.generation import EvalGenerationSpec, answers, generation_settings, prompts_for, prompts_of
from core.inference import generate
from core.jobs.run import BadInput, Run
from core.models import registry as models
from core.spec import SpecError
from storage.db import session, write_lock
from storage.tables import Rubric, utcnow

PLACEHOLDERS = ("{question}", "{reference}", "{answer}")
DEFAULT_RUBRIC = """You are grading an answer to a question.

Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Grade how correct and helpful the answer is compared with the reference, on a scale
from 1 (wrong or unhelpful) to 5 (fully correct and helpful).
Reply with JSON only, in this form: {"reasoning": "<one or two sentences>", "score": <1-5>}"""
HTTP_TIMEOUT_S = 120
RETRIES = 2


class JudgeError(RuntimeError):
    """The judge could not be asked (endpoint unreachable, refused, broken reply)."""


# --- rubrics ------------------------------------------------------------------------------


@dataclass
class RubricText:
    name: str
    text: str
    scale_min: int = 1
    scale_max: int = 5

    def fill(self, question: str, reference: str, answer: str) -> str:
        # one pass over the rubric only: rubrics contain JSON braces that str.format
        # would trip on, and an answer may itself contain "{reference}"
        values = {"question": question, "reference": reference, "answer": answer}
        return re.sub(r"\{(question|reference|answer)\}", lambda m: values[m.group(1)], self.text)


def check_rubric(text: str, scale_min: int, scale_max: int) -> None:
    if "{answer}" not in text:
        raise ValueError("rubric: put {answer} where the answer to grade goes (also {question} and {reference})")
    if not scale_min < scale_max:
        raise ValueError(f"scale: the lowest grade ({scale_min}) must be below the highest ({scale_max})")


def rubrics() -> list[RubricText]:
    """Every stored rubric, the built-in default first (also when never saved)."""
    with session() as s:
        rows = s.scalars(select(Rubric).order_by(Rubric.name)).all()
        found = [RubricText(r.name, r.text, r.scale_min, r.scale_max) for r in rows]
    if not any(r.name == "default" for r in found):
        found.insert(0, RubricText("default", DEFAULT_RUBRIC))
    return sorted(found, key=lambda r: (r.name != "default", r.name))


def get_rubric(name: str) -> RubricText:
    for rubric in rubrics():
        if rubric.name == name:
            return rubric
    raise ValueError(f"rubric: there is no rubric {name!r} (stored: {', '.join(r.name for r in rubrics())})")


def save_rubric(name: str, text: str, scale_min: int = 1, scale_max: int = 5, by=None) -> None:
    """Create or replace a rubric, for `by` (a member or more; default: the machine's
    owner). Jobs keep the text they used, so editing one never changes a finished
    evaluation."""
    from core.access import accounts, audit

    by = by or accounts.terminal()
    accounts.require(by, "member", "saving a rubric")
    name = (name or "").strip()
    if not name:
        raise ValueError("name: give the rubric a name")
    check_rubric(text, scale_min, scale_max)
    with session() as s:
        row = s.scalars(select(Rubric).where(Rubric.name == name)).first()
        if row is not None:  # Denied, in the audit trail (written outside the write below)
            accounts.require_change(by, row.owner_id, f"the rubric {name!r}", "change")
    owner = accounts.owner_for(by)
    with session() as s:
        write_lock(s)
        row = s.scalars(select(Rubric).where(Rubric.name == name)).first()
        if row is None:
            s.add(Rubric(name=name, text=text, scale_min=scale_min, scale_max=scale_max, owner_id=owner))
        else:
            row.text, row.scale_min, row.scale_max, row.updated_at = text, scale_min, scale_max, utcnow()
    audit.record(by, "save rubric", name, f"scale {scale_min}-{scale_max}")


# --- reading a grade ----------------------------------------------------------------------


@dataclass
class Grade:
    score: Optional[float]
    reasoning: str
    error: Optional[str] = None
    """Why no score could be read (a parse failure)."""


def parse_grade(reply: str, scale_min: int, scale_max: int) -> Grade:
    """The score (and reasoning) in a judge's reply: a JSON object with "score",
    else a "Score: N" (or grade, rating) line. Out of scale or missing = parse failure."""
    score: Optional[float] = None
    reasoning = reply.strip()
    for match in re.finditer(r"\{[^{}]*\}", reply, re.S):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "score" in obj:
            try:
                score = float(obj["score"])
            except (TypeError, ValueError):
                return Grade(None, reasoning, f"the score {obj['score']!r} is not a number")
            reasoning = str(obj.get("reasoning", obj.get("explanation", ""))).strip() or reasoning
            break
    if score is None:
        # "Score: 4", "**Score:** 4", "Rating = 4/5"; not the rubric's own "score": <1-5>
        match = re.search(r"\b(?:score|grade|rating)\b[\"*]*\s*[:=]\s*[*\"]*\s*(-?\d+(?:\.\d+)?)", reply, re.I)
        if match is None:
            return Grade(None, reasoning, "no score in the reply")
        score = float(match.group(1))
    if not scale_min <= score <= scale_max:
        return Grade(None, reasoning, f"score {score:g} is outside the scale {scale_min}-{scale_max}")
    return Grade(score, reasoning)


# --- asking -------------------------------------------------------------------------------


def chat_url(base: str) -> str:
    """Accept the base URL (…/v1) or the full chat completions URL."""
    base = base.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def ask_endpoint(url: str, prompt: str, *, api_key: str = "", model: str = "", max_tokens: int = 256) -> str:
    """One chat completion from an OpenAI-compatible endpoint (temperature 0)."""
    body = json.dumps(
        {
            "model": model or "default",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last: Exception = JudgeError("no attempt")
    for _ in range(RETRIES + 1):
        request = urllib.request.Request(chat_url(url), data=body, headers=headers, method="POST")
        try:
            with outbound.open_url(request, timeout=HTTP_TIMEOUT_S) as response:
                data = json.loads(response.read().decode("utf-8"))
            return str(data["choices"][0]["message"]["content"] or "")
        except outbound.Refused as exc:
            raise JudgeError(str(exc)) from None
        except urllib.error.HTTPError as exc:
            detail = one_line(exc.read().decode("utf-8", "replace"))  # a remote party's words: one short line
            if exc.code in (401, 403):
                raise JudgeError(f"the judge endpoint {url} refused the request ({exc.code}): check the API key. {detail}") from None
            if exc.code in (400, 404, 422):
                raise JudgeError(f"the judge endpoint {url} rejected the request ({exc.code}): {detail}") from None
            last = JudgeError(f"the judge endpoint {url} failed ({exc.code}): {detail}")
        except urllib.error.URLError as exc:
            last = JudgeError(f"cannot reach the judge endpoint {url}: {exc.reason}")
        except (KeyError, IndexError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JudgeError(f"the judge endpoint {url} did not answer like an OpenAI chat completion: {one_line(repr(exc))}") from None
        except TimeoutError:
            last = JudgeError(f"the judge endpoint {url} did not answer within {HTTP_TIMEOUT_S} s")
        except (OSError, http.client.HTTPException) as exc:  # reset, closed mid-reply
            last = JudgeError(f"the connection to the judge endpoint {url} broke: {exc!r}")
    raise last


def ask_local(model, tokenizer, prompt: str, max_tokens: int = 256) -> str:
    """A registered model as judge: its chat template, greedy decoding."""
    text = generate.prompt_text(tokenizer, [{"role": "user", "content": prompt}])
    try:
        return "".join(generate.stream(model, tokenizer, text, generate.Settings(max_new_tokens=max_tokens, temperature=0)))
    except ValueError as exc:  # e.g. the filled rubric is longer than the judge's context
        raise JudgeError(f"the judge model cannot take this prompt: {exc}") from None


# --- the job ------------------------------------------------------------------------------


class EvalJudgeSpec(EvalGenerationSpec):
    """A judge grades the model's answers with a rubric: a registered model, or any
    OpenAI-compatible endpoint (this platform's own server included)."""

    kind: ClassVar[str] = "eval_judge"
    command: ClassVar[tuple[str, ...]] = ("eval", "judge")
    input_models: ClassVar[tuple[str, ...]] = ("model", "judge_model")
    secrets: ClassVar[tuple[str, ...]] = ("judge_api_key",)

    max_samples: int = Field(20, ge=0)
    """Judge the first N rows of the split (0: all)."""
    judge_model: str = ""
    """A registered model as the judge: name or id (or give judge_url)."""
    judge_url: str = ""
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (or give judge_model)."""
    judge_api_key: str = ""
    """Key for the endpoint, sent as a Bearer token (stored with the job; shown masked).
    On the command line prefer --judge-api-key-env VAR: a key in the arguments shows in the process list."""
    judge_endpoint_model: str = ""
    """The `model` field sent to the endpoint (empty: "default")."""
    rubric: str = "default"
    """Name of the stored rubric (Evaluation page, Rubrics tab)."""
    judge_max_new_tokens: int = Field(256, ge=1, le=32768)
    """Longest judge reply, in tokens."""

    @model_validator(mode="after")
    def _one_judge(self) -> "EvalJudgeSpec":
        self.judge_url = self.judge_url.strip()
        if not self.judge_model and not self.judge_url:
            raise SpecError("judge_model", "choose the judge: a registered judge_model or a judge_url")
        if self.judge_model and self.judge_url:
            raise SpecError("judge_model", "give either a registered judge_model or a judge_url, not both")
        if self.judge_url and not re.match(r"^https?://[^\s/]+", self.judge_url):
            raise SpecError("judge_url", f"{self.judge_url!r} is not an http(s) URL like http://127.0.0.1:8000/v1")
        if self.judge_url and "@" in urllib.parse.urlsplit(self.judge_url).netloc:  # the URL shows in titles and errors
            raise SpecError("judge_url", "a name or password in the URL would be shown to everyone: give the key as "
                                         "the judge's API key (judge_api_key; --judge-api-key-env from a terminal)")
        if not self.rubric.strip():
            raise SpecError("rubric", "give the name of a rubric")
        return self

    def check_inputs(self) -> None:
        if self.judge_url:
            try:
                outbound.check_url(self.judge_url, "the judge endpoint")
            except outbound.Refused as exc:
                raise SpecError("judge_url", str(exc)) from None
        super().check_inputs()

    def title(self) -> str:
        judge = self.judge_model or self.judge_url
        return f"Judge ({judge}) grades '{self.model}' on '{self.dataset}'"


def run_eval_judge(spec: EvalJudgeSpec, run: Run) -> dict[str, Any]:
    data_row, rows, split, n_prompts = prompts_for(spec, run)
    try:
        rubric = get_rubric(spec.rubric)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if spec.judge_model:
        judge_row = models.get(run.model_ids[1])
        run.progress(0, None, f"loading the judge '{judge_row.name}'", force=True)
        judge_model, judge_tok = generate.load(judge_row)

        def ask(prompt: str) -> str:
            return ask_local(judge_model, judge_tok, prompt, spec.judge_max_new_tokens)

        judge_name = judge_row.name
    else:

        def ask(prompt: str) -> str:
            return ask_endpoint(
                spec.judge_url, prompt, api_key=spec.judge_api_key, model=spec.judge_endpoint_model, max_tokens=spec.judge_max_new_tokens
            )

        judge_name = spec.judge_url

    def score(model, tokenizer, tick):
        prompts = prompts_of(data_row.format, rows, tokenizer)
        counts: dict[str, int] = {}
        answered = list(answers(model, tokenizer, prompts, spec, lambda n, m: tick(n // 2, m), counts))
        samples, grades, failures, errors = [], [], 0, 0
        for number, ((i, question, _, reference, _), output) in enumerate(answered, 1):
            prompt = rubric.fill(question, reference, output)
            try:
                reply = ask(prompt)
            except JudgeError as exc:
                if number == 1:
                    raise BadInput(str(exc)) from None  # the judge cannot be asked at all
                errors += 1
                samples.append({"idx": i, "prompt": question, "reference": reference, "output": output,
                                "scores": {}, "extra": {"judge_error": str(exc)}})
                tick((len(answered) + number) // 2, f"judged {number} of {len(answered)}")
                continue
            grade = parse_grade(reply, rubric.scale_min, rubric.scale_max)
            if grade.score is None:
                failures += 1
            else:
                grades.append(grade.score)
            samples.append(
                {
                    "idx": i,
                    "prompt": question,
                    "reference": reference,
                    "output": output,
                    "scores": {"judge_score": grade.score} if grade.score is not None else {},
                    "extra": {"reasoning": grade.reasoning, "judge_reply": reply, "parse_error": grade.error},
                }
            )
            tick((len(answered) + number) // 2, f"judged {number} of {len(answered)}")
        metrics = {
            "judge_score": sum(grades) / len(grades) if grades else None,
            "graded": len(grades),
            "parse_failures": failures,
            "judge_errors": errors,
            "samples": len(samples),
            **counts,
        }
        return metrics, samples

    result = evaluate_targets(spec, run, score, n_prompts)
    result.update(
        split=split,
        num_samples=len(rows),
        settings=generation_settings(spec) | {"judge": judge_name, "judge_max_new_tokens": spec.judge_max_new_tokens},
        rubric={"name": rubric.name, "text": rubric.text, "scale": [rubric.scale_min, rubric.scale_max]},
    )
    return result
