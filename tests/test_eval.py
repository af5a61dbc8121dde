"""Evaluation jobs on the tiny model: perplexity against plain transformers, text
metrics against the metric libraries, the judge against a real local HTTP
server and a registered model, checkpoints over training steps, the CLI."""

from __future__ import annotations

import json
import math
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.data.importer import ImportDatasetSpec
from core.evaluation import common as eval_common
from core.evaluation import generation, judge, perplexity, scoring
from core.evaluation import results as evals
from core.evaluation.generation import EvalGenerationSpec
from core.evaluation.judge import EvalJudgeSpec
from core.evaluation.perplexity import EvalPerplexitySpec
from core.format import jsonable
from core.inference import generate
from core.jobs import lifecycle as jobs
from core.models import registry as models
from core.models.create import CreateModelSpec
from core.spec import SpecError
from core.training.sft import SFTSpec

FACTS = [
    ("What colour is the sky on a clear day?", "Blue."),
    ("What do bees make?", "Honey."),
    ("How many legs does a spider have?", "Eight."),
    ("What is frozen water called?", "Ice."),
]
TEXT = (
    "The platform keeps every job in the database, so a page reload never loses a run. "
    "Evaluation measures a model on your own data with standard metrics. " * 3
)


def ok(job_id: int, timeout: float = 240):
    job = jobs.wait(job_id, timeout_s=timeout)
    assert job.status == "succeeded", f"{job.error}\n{job.log_tail}"
    return job


@pytest.fixture
def setup(home, tmp_path, prepared):
    def build():
        ok(jobs.submit(CreateModelSpec(name="tiny", arch="llama", size="tiny", seed=3)))
        facts = tmp_path / "facts.jsonl"
        facts.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in FACTS * 2))
        ok(jobs.submit(ImportDatasetSpec(path=str(facts), name="facts", validation_fraction=0.25)))
        text = tmp_path / "text.jsonl"
        text.write_text("".join(json.dumps({"text": t}) + "\n" for t in [TEXT, "Short text here.", TEXT[:120]]))
        ok(jobs.submit(ImportDatasetSpec(path=str(text), name="prose", validation_fraction=0)))

    prepared("eval-tiny-facts-prose", build)
    return models.find("tiny")


def test_perplexity_equals_exp_mean_nll_from_plain_transformers(setup, home):
    folder = home / setup.path
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(TEXT)["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    expected = math.exp(loss)
    # one window over the whole text, and a sliding window: each token scored once
    whole_nll, whole_n = perplexity.window_nll(model, ids, max_length=len(ids) + 5, stride=len(ids))
    assert whole_n == len(ids) - 1
    assert math.exp(whole_nll / whole_n) == pytest.approx(expected, rel=1e-4)
    slid_nll, slid_n = perplexity.window_nll(model, ids, max_length=32, stride=16)
    assert slid_n == len(ids) - 1  # every token after the first, once
    assert math.exp(slid_nll / slid_n) != pytest.approx(expected, rel=1e-6)  # less context, different number

    # the job on the same text (a text data set, one row) gives the same perplexity
    job = ok(jobs.submit(EvalPerplexitySpec(model="tiny", dataset="prose", split="train", max_samples=1, max_length=512)))
    result = job.result
    assert result["metrics"]["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert result["metrics"]["tokens"] == len(ids) - 1
    assert result["dataset_fingerprint"] and result["model"] == "tiny" and result["seed"] == 0
    assert result["settings"] == {"window": 256, "stride": 128}  # 512 asked, capped at the model's context
    [sample] = evals.samples(job.id)
    assert sample["prompt"] == TEXT and sample["scores"]["tokens"] == len(ids) - 1


@pytest.mark.fast
def test_text_metrics_equal_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    outputs = ["The cat sat on the mat.", "Paris is the capital of France", "forty two"]
    refs = ["The cat is on the mat.", "The capital of France is Paris.", "Forty-two."]
    per = [scoring.sample_scores(o, r) for o, r in zip(outputs, refs)]
    rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for (o, r), s in zip(zip(outputs, refs), per):
        assert s["bleu"] == sacrebleu.sentence_bleu(o, [r]).score
        assert s["chrf"] == sacrebleu.sentence_chrf(o, [r]).score
        direct = rouge.score(r, o)
        assert (s["rouge1"], s["rouge2"], s["rougeL"]) == (direct["rouge1"].fmeasure, direct["rouge2"].fmeasure, direct["rougeL"].fmeasure)
    corpus = scoring.corpus_scores(outputs, refs, per)
    assert corpus["bleu"] == sacrebleu.corpus_bleu(outputs, [refs]).score
    assert corpus["chrf"] == sacrebleu.corpus_chrf(outputs, [refs]).score
    assert scoring.exact_match("Forty two!", "forty  two") == 1.0
    assert scoring.contains("I think the answer is Paris, clearly.", "paris") == 1.0
    assert scoring.contains("Parisian food", "Paris") == 0.0
    assert corpus["exact_match"] == pytest.approx(1 / 3) and corpus["contains"] == pytest.approx(1 / 3)


def test_generation_job_stores_every_sample_and_its_settings(setup):
    job = ok(jobs.submit(EvalGenerationSpec(model="tiny", dataset="facts", split="all", max_new_tokens=8, batch_size=3)))
    result = job.result
    assert set(scoring.GENERATION_METRICS) <= set(result["metrics"])
    assert result["settings"] == {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "batch_size": 3, "seed": 0}
    rows = evals.samples(job.id)
    assert len(rows) == 8 and {r["reference"] for r in rows} == {a for _, a in FACTS}
    for r in rows:  # the stored per-sample scores are the library's for the stored strings
        assert r["scores"] == pytest.approx(scoring.sample_scores(r["output"], r["reference"]))
    # batched, left-padded greedy answers equal one-at-a-time greedy answers
    model, tok = generate.load(setup)
    prompts = generation.prompts_of("instruction", [{"prompt": q, "response": a} for q, a in FACTS], tok)
    spec = EvalGenerationSpec(model="tiny", dataset="facts", max_new_tokens=8)
    batched, _ = generation.generate_batch(model, tok, [p[2] for p in prompts], spec, False)
    single = [generation.generate_batch(model, tok, [p[2]], spec, False)[0][0] for p in prompts]
    assert batched == single
    table = evals.results_rows()
    assert table[0]["job"] == job.id and table[0]["model"] == "tiny" and "bleu" in table[0]


def test_long_prompts_are_cut_to_fit_the_context(setup):
    model, tok = generate.load(setup)  # a context of 256 tokens
    prompts = generation.prompts_of("instruction", [{"prompt": q, "response": a} for q, a in FACTS], tok)
    answers, truncated = generation.generate_batch(
        model, tok, [p[2] for p in prompts], EvalGenerationSpec(model="tiny", dataset="facts", max_new_tokens=240), False
    )
    assert truncated == len(prompts) and len(answers) == len(prompts)
    with pytest.raises(ValueError, match="max_new_tokens: 250 leaves no room for the prompt"):
        generation.generate_batch(model, tok, [prompts[0][2]], EvalGenerationSpec(model="tiny", dataset="facts", max_new_tokens=250), False)


def test_bad_input_is_refused_with_the_field(setup):
    with pytest.raises(SpecError, match="dataset: 'prose' is text data; eval_generation needs instruction or chat or prompt"):
        jobs.submit(EvalGenerationSpec(model="tiny", dataset="prose"))
    with pytest.raises(SpecError, match="judge_model: choose the judge"):
        EvalJudgeSpec(model="tiny", dataset="facts")
    with pytest.raises(SpecError, match="judge_url: 'ftp://x' is not an http"):
        EvalJudgeSpec(model="tiny", dataset="facts", judge_url="ftp://x")
    with pytest.raises(SpecError, match="judge_url: a name or password in the URL would be shown to everyone"):
        EvalJudgeSpec(model="tiny", dataset="facts", judge_url="http://me:pa55@127.0.0.1:8000/v1")
    with pytest.raises(SpecError, match="split: 'test': input should be 'auto', 'validation', 'train' or 'all'"):
        EvalPerplexitySpec(model="tiny", dataset="prose", split="test")
    with pytest.raises(SpecError, match="stride: 64 must be shorter than the window"):
        EvalPerplexitySpec(model="tiny", dataset="prose", max_length=64, stride=64)
    # what the registry knows is checked before a job is queued: the window defaults
    # to the model's context (256 here), the split must exist, checkpoints must have been kept
    before = len(jobs.list_jobs())
    with pytest.raises(SpecError, match=r"stride: 300 must be shorter than the window \(256 tokens, the model's context\)"):
        jobs.submit(EvalPerplexitySpec(model="tiny", dataset="prose", stride=300))
    with pytest.raises(SpecError, match="split: 'prose' has no validation split"):
        jobs.submit(EvalPerplexitySpec(model="tiny", dataset="prose", split="validation"))
    with pytest.raises(SpecError, match="checkpoints: 'tiny' has no training checkpoints"):
        jobs.submit(EvalPerplexitySpec(model="tiny", dataset="prose", checkpoints=True))
    assert len(jobs.list_jobs()) == before


# --- the judge ----------------------------------------------------------------------------

REPLIES = [
    '{"reasoning": "Correct and short.", "score": 5}',
    "The answer is partly right.\nScore: 3",
    "I cannot decide.",  # no score: a parse failure
    '{"reasoning": "Off the scale", "score": 9}',  # outside 1-5: a parse failure
]


class StubJudge(ThreadingHTTPServer):
    """A real OpenAI-compatible HTTP server on 127.0.0.1 returning fixed grades in turn."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
                self.requests.append({"path": handler.path, "auth": handler.headers.get("Authorization"), "body": body})
                if handler.headers.get("Authorization") != "Bearer sekrit":
                    handler.send_response(401)
                    handler.end_headers()
                    handler.wfile.write(b'{"error": "bad key"}')
                    return
                reply = REPLIES[(len(self.requests) - 1) % len(REPLIES)]
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def stub():
    server = StubJudge()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_judge_grades_through_an_openai_compatible_server(setup, stub):
    spec = EvalJudgeSpec(model="tiny", dataset="facts", split="all", max_new_tokens=6, judge_url=stub.url,
                         judge_api_key="sekrit", judge_endpoint_model="grader")
    job = ok(jobs.submit(spec))
    m = job.result["metrics"]
    # 8 answers graded in turn by the 4 fixed replies: 5, 3, failure, failure (twice)
    assert m["parse_failures"] == 4 and m["graded"] == 4 and m["judge_score"] == pytest.approx(4.0)
    assert m["judge_errors"] == 0
    assert len(stub.requests) == 8 and stub.requests[0]["path"] == "/v1/chat/completions"
    first = stub.requests[0]["body"]
    assert first["model"] == "grader" and first["temperature"] == 0
    assert "Answer to grade:" in first["messages"][0]["content"]  # the default rubric, filled in
    rows = evals.samples(job.id)
    failures = [r for r in rows if r["extra"]["parse_error"]]
    assert len(failures) == 4 and {r["extra"]["judge_reply"] for r in failures} == set(REPLIES[2:])
    assert any(r["extra"]["reasoning"] == "Correct and short." and r["scores"]["judge_score"] == 5 for r in rows)
    assert job.result["rubric"]["name"] == "default"
    shown = jobs.job_dict(jobs.get(job.id))
    assert shown["spec"]["judge_api_key"] == "***" and "sekrit" not in shown["command"]

    # a wrong key: the job fails at once and says what to check
    bad = jobs.wait(jobs.submit(EvalJudgeSpec(model="tiny", dataset="facts", judge_url=stub.url, judge_api_key="nope")), timeout_s=120)
    assert bad.status == "failed" and bad.error_class == "bad_input" and "check the API key" in bad.error


def test_judge_with_a_registered_model_and_an_edited_rubric(setup):
    judge.save_rubric("strict", "Grade {answer} against {reference} for {question}. Reply: score: N", 0, 10)
    assert [r.name for r in judge.rubrics()][:2] == ["default", "strict"]
    with pytest.raises(ValueError, match=r"rubric: put \{answer\}"):
        judge.save_rubric("broken", "no placeholder")
    job = ok(jobs.submit(EvalJudgeSpec(model="tiny", dataset="facts", max_samples=2, max_new_tokens=4,
                                       judge_model="tiny", rubric="strict", judge_max_new_tokens=8)))
    m = job.result["metrics"]
    # a random tiny model writes no grade: every reply is a counted parse failure, kept with the reply
    assert m["graded"] + m["parse_failures"] == 2 and m["samples"] == 2
    assert job.result["rubric"]["scale"] == [0, 10] and job.model_ids[1] == setup.id
    assert all("judge_reply" in r["extra"] for r in evals.samples(job.id))


@pytest.mark.fast
def test_parse_grade():
    assert judge.parse_grade('ok {"score": 4, "reasoning": "fine"}', 1, 5).score == 4
    assert judge.parse_grade("Score: 2.5", 1, 5).score == 2.5
    assert judge.parse_grade("Good answer.\n**Score:** 4", 1, 5).score == 4
    assert judge.parse_grade("Rating: 3/5", 1, 5).score == 3
    assert judge.parse_grade('{"score": "high"}', 1, 5).error == "the score 'high' is not a number"
    assert judge.parse_grade("score: 0", 1, 5).error == "score 0 is outside the scale 1-5"
    # a small judge echoing the rubric's template, or a word that merely ends in "grade": no grade
    echo = 'Reply with JSON only, in this form: {"reasoning": "<one or two sentences>", "score": <1-5>}'
    assert judge.parse_grade(echo, 1, 5).error == "no score in the reply"
    assert judge.parse_grade("We should upgrade 2 things.", 1, 5).error == "no score in the reply"


@pytest.mark.fast
def test_rubric_is_filled_in_one_pass_and_results_are_storable():
    rubric = judge.RubricText("r", "Q: {question} R: {reference} A: {answer} {\"score\": N}")
    assert rubric.fill("what is {answer}?", "ref", "{reference}!") == 'Q: what is {answer}? R: ref A: {reference}! {"score": N}'
    assert jsonable({"a": float("nan"), "b": [float("inf"), 1.5], "t": "x\x00y"}) == {"a": None, "b": [None, 1.5], "t": "xy"}
    assert judge.parse_grade("", 1, 5).error == "no score in the reply"


# --- checkpoints over training steps, the command line -------------------------------------


def test_checkpoints_of_a_run_are_evaluated_in_step_order(setup):
    train = ok(jobs.submit(SFTSpec(model="tiny", dataset="facts", output_name="tuned", method="lora",
                                   max_steps=6, batch_size=2, save_steps=2, keep_checkpoints=0)), timeout=300)
    tuned = models.find("tuned")
    steps = [s for s, _ in eval_common.checkpoints_of(tuned)]
    assert steps == [2, 4, 6]  # keep_checkpoints=0 keeps every one
    job = ok(jobs.submit(EvalPerplexitySpec(model="tuned", dataset="facts", split="all", checkpoints=True)))
    assert [p["step"] for p in job.result["by_step"]] == [2, 4, 6]
    series = jobs.metrics(job.id)["perplexity"]
    assert [s for s, _ in series] == [2, 4, 6]
    assert series[0][1] != pytest.approx(series[-1][1])  # the weights changed between checkpoints
    assert series[-1][1] == pytest.approx(job.result["metrics"]["perplexity"])
    # the checkpoint at the last step is the model itself: evaluated once
    assert len(evals.samples(job.id, 4)) == 8 and len(evals.samples(job.id)) == 8
    assert evals.sample_steps(job.id) == [2, 4, None]
    assert train.id == tuned.job_id
    # the base of an adapter cannot be deleted while a job uses the adapter; once it is
    # gone, the adapter is not offered for generation, and says why
    queued = jobs.submit(EvalPerplexitySpec(model="tuned", dataset="facts"), start=False)
    with pytest.raises(models.ModelError, match=f"in use by job {queued}"):
        models.delete(setup.id)
    jobs.cancel(queued)
    models.delete(setup.id)
    assert generate.usable(models.find("tuned")) == "'tuned' is an adapter whose base model was deleted"


def test_eval_command_prints_the_result_as_json(setup, cli):
    out = cli("eval", "generation", "--model", "tiny", "--dataset", "facts", "--max-new-tokens", "4", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "succeeded" and set(scoring.GENERATION_METRICS) <= set(data["metrics"])
    listed = cli("eval", "results", "--json")
    assert json.loads(listed.stdout)[0]["job"] == data["job_id"]
    shown = cli("eval", "samples", str(data["job_id"]))
    assert "reference:" in shown.stdout
    # the spec-file command the Jobs page shows runs as shown
    command = shlex.split(jobs.spec_file_command(jobs.get(data["job_id"])))
    assert command[:3] == ["python", "-m", "core"]
    again = cli(*command[3:], "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["metrics"] == data["metrics"]
    bad = cli("eval", "perplexity", "--model", "tiny", "--dataset", "nope")
    assert bad.returncode == 2 and "dataset: there is no data set 'nope'" in bad.stderr
    no_key = cli("eval", "judge", "--model", "tiny", "--dataset", "facts", "--judge-url", "http://127.0.0.1:9/v1",
                 "--judge-api-key-env", "LLMDEV_NO_SUCH_VAR")
    assert no_key.returncode == 2 and "the environment variable LLMDEV_NO_SUCH_VAR is not set" in no_key.stderr


def test_lm_eval_job_runs_the_local_task(setup, cli):
    out = cli("eval", "lm-eval", "--model", "tiny", "--task", "llmdev_basics", "--limit", "6", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "succeeded" and 0 <= data["metrics"]["llmdev_basics/acc"] <= 1
    rows = evals.samples(data["job_id"])
    assert len(rows) == 6 and all(r["extra"]["task"] == "llmdev_basics" and "acc" in r["scores"] for r in rows)
    assert sum(r["scores"]["acc"] for r in rows) / 6 == pytest.approx(data["metrics"]["llmdev_basics/acc"])
    unknown = cli("eval", "lm-eval", "--model", "tiny", "--task", "no_such_task", "--wait")
    assert unknown.returncode == 1 and "unknown lm-eval task 'no_such_task'" in unknown.stderr


def test_an_evaluation_can_be_cancelled(setup):
    from conftest import wait_for

    job_id = jobs.submit(EvalGenerationSpec(model="tiny", dataset="facts", split="all", max_new_tokens=200, batch_size=1))
    wait_for(lambda: jobs.get(job_id).progress_step >= 1, 120, what="the first answer")
    jobs.cancel(job_id)
    job = jobs.wait(job_id, timeout_s=60)
    assert job.status == "cancelled" and evals.samples(job_id) == []


def test_a_generating_batch_reports_each_token_and_each_finished_answer(setup):
    from core.evaluation.generation import EvalGenerationSpec, generate_batch

    model, tokenizer = generate.load(setup)
    spec = EvalGenerationSpec(model="tiny", dataset="facts", max_new_tokens=12, temperature=0)
    seen: list[tuple[int, int]] = []
    answers, _ = generate_batch(model, tokenizer, [q for q, _ in FACTS[:3]], spec, True, lambda done, n: seen.append((done, n)))
    assert len(answers) == 3
    assert [n for _, n in seen] == list(range(1, len(seen) + 1))  # once per generated token
    assert 1 <= len(seen) <= 12
    finished = [done for done, _ in seen]
    assert finished == sorted(finished) and all(0 <= d <= 3 for d in finished)
