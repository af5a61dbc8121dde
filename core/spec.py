"""What a job is: one typed spec per job kind, and what every spec can do.

A spec is a pydantic model. Each field carries its type, its choices
(`Literal[...]`), its range (`Field(ge=..., le=...)`), its default and a
one-line doc (the docstring under it). Building a spec coerces and validates
it (YAML's "2e-4" is a number, the CLI's "8" an int) and raises `SpecError`,
which names the field and says what to do. From the same fields come the CLI
flags (`core.cli`), the replay command (`replay()`), the YAML (`to_yaml()`)
and the form widgets (`ui.forms.field`).

What differs between kinds is declared on the spec class as traits; the rest
of the platform reads the traits, never a kind's name:

    kind             the name in the jobs table and in spec files
    command          the CLI words that submit it, e.g. ("models", "create");
                     the last word is the kind's short name
    positional       fields given as positional CLI arguments
    flags            field -> CLI flag, where the flag is not the field's name
    output           what it makes: "model", "dataset", "evaluation",
                     "export", "service" or "" (an adapter is a model whose
                     source is "adapter": see `model_source()`)
    output_field     the field that names the output
    trains           a training run: DDP processes, training charts
    resumes          a pause writes a checkpoint the run continues from
    reward_functions its spec sets up reward functions (core/rewards.py)
    aligns           an alignment method: the RLHF page offers it under this label
    service          runs until stopped and takes no job slot
    export_format    what an export job makes: "onnx" or "triton" (its row's format)
    busy             what an active job means for the models it reads
    input_models     fields that name models the job reads
    input_datasets   fields that name data sets the job reads
    input_exports    fields that name exports the job reads (they cannot be deleted meanwhile)
    user_code        fields that name a user's code the job runs (confined: core/access/sandbox.py)
    dataset_formats  the data set formats those fields accept
"""

from __future__ import annotations

import os
import re
import shlex
import typing
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$")
# What a job makes ("": nothing registered, e.g. a probe)
Output = Literal["model", "dataset", "evaluation", "export", "service", ""]
OUTPUTS = typing.get_args(Output)


class SpecError(ValueError):
    """Bad input in a spec: says which field and how to fix it."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def _usable_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValueError("give it a name")
    if not MODEL_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a usable name: up to 100 letters, digits, spaces, '.', '_', '+' or '-', "
            "starting with a letter or digit"
        )
    return name


def _reference(value: str) -> str:
    value = (value or "").strip()
    if not value:
        raise ValueError("give a name or an id")
    return value


# The name of something a job makes (a model, a data set): the registries share the rule.
Name = Annotated[str, AfterValidator(_usable_name)]
# A registered model or data set: its name or its id.
Ref = Annotated[str, AfterValidator(_reference)]


def check_model_name(name: str, field_name: str = "name") -> str:
    """The `Name` rule outside a spec (renaming a model or a data set)."""
    try:
        return _usable_name(name)
    except ValueError as exc:
        raise SpecError(field_name, str(exc)) from None


RUN_FIELDS = ("runner", "gpus")
"""Where a job runs, not what it does: every kind has them, last."""


class Spec(BaseModel):
    """The base of every job spec: validation, traits, YAML and replay command."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        coerce_numbers_to_str=True,  # YAML `model: 3` is the id "3"
        protected_namespaces=(),
    )

    kind: ClassVar[str] = ""
    command: ClassVar[tuple[str, ...]] = ()
    positional: ClassVar[tuple[str, ...]] = ()
    flags: ClassVar[dict[str, str]] = {}
    output: ClassVar[Output] = ""
    output_field: ClassVar[str] = ""
    trains: ClassVar[bool] = False
    # stops with a checkpoint on a pause and continues from it (`train resume`)
    resumes: ClassVar[bool] = False
    # its spec sets up reward functions (core/rewards.py: reward_names() and their
    # settings), which a reward evaluation can score with (rewards_from)
    reward_functions: ClassVar[bool] = False
    # an alignment method: offered on the RLHF page under this label
    aligns: ClassVar[str] = ""
    service: ClassVar[bool] = False
    export_format: ClassVar[str] = ""
    # short and small (an import, a tiny model): its own lane beside a training
    # run instead of the queue behind it (is_light() may look at the fields)
    light: ClassVar[bool] = False
    busy: ClassVar[str] = "in use"
    input_models: ClassVar[tuple[str, ...]] = ()
    input_datasets: ClassVar[tuple[str, ...]] = ()
    input_exports: ClassVar[tuple[str, ...]] = ()
    dataset_formats: ClassVar[tuple[str, ...]] = ()
    # fields naming code of the user's that the job runs (a reward file, an lm-eval task folder)
    user_code: ClassVar[tuple[str, ...]] = ()
    # fields holding a secret (an API key): never printed; `<field>_env` names
    # an environment variable to read it from, in YAML and on the CLI
    secrets: ClassVar[tuple[str, ...]] = ()
    # mapping fields given as NAME=VALUE pairs (the CLI's repeatable flag): how to write one
    pair_format: ClassVar[dict[str, str]] = {}
    # fields a base class shares that read best last (a training run's seed and bookkeeping)
    trailing_fields: ClassVar[tuple[str, ...]] = ("threads",)

    threads: int = Field(0, ge=0)
    """torch threads for this job (0: chosen from the free cores and what else runs)."""
    runner: Literal["local", "ray"] = "local"
    """Where the job runs: local (a process on this machine) or ray (a Ray job on the
    cluster at LLMDEV_RAY_ADDRESS, or the address set on the Jobs page)."""
    gpus: int = Field(0, ge=0)
    """GPUs to ask the Ray cluster for (runner ray); a local job uses this machine's GPUs."""

    def is_light(self) -> bool:
        """Whether this job runs in the light lane (see `light`)."""
        return self.light

    def resolved(self) -> dict[str, tuple[Any, str]]:
        """The fields this spec leaves to a default that depends on something else
        (a learning rate of 0: the kind's default for the method), as {name: (the
        value the job uses, where it came from)}. The worker logs them at the start
        of the job; a training run's spec.yaml holds these values."""
        return {}

    def with_resolved(self) -> "Spec":
        """This spec with its `resolved` values written in."""
        return self.model_copy(update={name: value for name, (value, _) in self.resolved().items()})

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _spec_error(type(self), exc) from None

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in cls.secrets:
            var = data.pop(f"{name}_env", None)
            if var:
                if not os.environ.get(str(var)):
                    raise SpecError(f"{name}_env", f"the environment variable {var} is not set")
                data[name] = os.environ[str(var)]
        for name, value in list(data.items()):
            if isinstance(value, (list, tuple)) and name in cls.model_fields and _base_type(name, cls) is dict:
                data[name] = _pairs(name, value, cls.pair_format.get(name, "NAME=VALUE"))
        for name, value in data.items():
            # pydantic reads True as 1: a flag where a number belongs is a mistake
            if isinstance(value, bool) and name in cls.model_fields and _base_type(name, cls) in (int, float):
                raise SpecError(name, f"{value!r} is not a number")
        return data

    @model_validator(mode="after")
    def _gpus_need_ray(self) -> "Spec":
        if self.gpus and self.runner != "ray":
            raise SpecError("gpus", "GPUs are asked of a Ray cluster: set runner to ray (a job run here uses this machine's GPUs)")
        return self

    # --- what a person reads -----------------------------------------------------------

    def title(self) -> str:
        return f"{self.kind} job"

    def to_dict(self) -> dict[str, Any]:
        """What spec.json and the jobs table hold."""
        return {"kind": self.kind, **self.model_dump()}

    def changed(self) -> dict[str, Any]:
        """The required fields and those that differ from their defaults, in field order."""
        out = {}
        for name in self.field_names():
            info, value = type(self).model_fields[name], getattr(self, name)
            if info.is_required() or value != info.get_default(call_default_factory=True):
                out[name] = value
        return out

    def to_yaml(self) -> str:
        """The spec file that replays this job with `python -m core run FILE`."""
        import yaml

        data: dict[str, Any] = {"kind": self.kind}
        for name, value in self.changed().items():
            if name in self.secrets:
                data[f"{name}_env"] = _env_name(name)  # the key itself is never written
            else:
                data[name] = value
        return yaml.safe_dump(data, sort_keys=False)

    def replay(self) -> str:
        """The command line that submits this very spec again (`python -m core ...`)."""
        parts = ["python -m core", *self.command]
        values = self.changed()
        for name in self.positional:
            parts.append(shlex.quote(str(getattr(self, name))))
        for name, value in values.items():
            if name in self.positional:
                continue
            flag = "--" + type(self).flag(name)
            if name in self.secrets:
                parts.append(f"{flag}-env {_env_name(name)}")  # the key itself is never printed
            elif isinstance(value, bool):
                parts.append(flag if value else f"--no-{flag[2:]}")
            elif isinstance(value, list):
                parts += [f"{flag} {shlex.quote(str(v))}" for v in value]
            elif isinstance(value, dict):
                parts += [f"{flag} {shlex.quote(f'{k}={v}')}" for k, v in value.items()]
            elif value is not None:
                parts.append(f"{flag} {shlex.quote(str(value))}")
        return " ".join(parts)

    def check_inputs(self) -> None:
        """Checks that read the inputs (files), run once before a job is queued;
        raise SpecError. Validation itself stays cheap: it runs in every process."""

    # --- what forms, flags and tables read ----------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields in reading order (for YAML, flags and forms)."""
        tail = [n for n in (*cls.trailing_fields, *RUN_FIELDS) if n in cls.model_fields]
        return [n for n in cls.model_fields if n not in tail] + tail

    @classmethod
    def flag(cls, name: str) -> str:
        return cls.flags.get(name, name).replace("_", "-")

    @classmethod
    def doc(cls, name: str) -> str:
        return (cls.model_fields[name].description or "").strip()

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def choices(cls, name: str) -> Optional[tuple[Any, ...]]:
        """The allowed values of a Literal field, else None."""
        annotation = cls.model_fields[name].annotation
        return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None

    @classmethod
    def bounds(cls, name: str) -> tuple[Optional[float], Optional[float]]:
        """(lowest, highest) bound, from the field's ge/gt/le/lt (gt and lt are
        themselves excluded: the spec says so when one is given)."""
        low = high = None
        for item in cls.model_fields[name].metadata:
            for attr in ("ge", "gt"):
                low = getattr(item, attr) if getattr(item, attr, None) is not None else low
            for attr in ("le", "lt"):
                high = getattr(item, attr) if getattr(item, attr, None) is not None else high
        return low, high

    @classmethod
    def base_type(cls, name: str) -> Any:
        """int, float, bool, str, list, dict (Optional unwrapped; Literal -> str)."""
        return _base_type(name, cls)

    @classmethod
    def short_name(cls) -> str:
        """The kind's short name ("perplexity", "lm-eval"): its command's last word."""
        return cls.command[-1] if cls.command else cls.kind


def _base_type(name: str, cls: type[Spec]) -> Any:
    annotation = cls.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return type(typing.get_args(annotation)[0])
    return typing.get_origin(annotation) or annotation


def _pairs(name: str, value: Any, how: str) -> dict[str, str]:
    """NAME=VALUE strings (a repeated CLI flag) as a mapping."""
    pairs = {}
    for pair in value:
        key, sep, item = str(pair).partition("=")
        if not sep or not key.strip() or not item.strip():
            raise SpecError(name, f"{pair!r}: write it as {how}")
        pairs[key.strip()] = item.strip()
    return pairs


def _env_name(field_name: str) -> str:
    return field_name.upper()


def _spec_error(cls: type[Spec], exc: ValidationError) -> SpecError:
    """pydantic's errors as one SpecError that names the (first) field."""
    found: list[SpecError] = []
    for err in exc.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SpecError):
            found.append(cause)
            continue
        where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "spec"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"not a field of {cls.kind} (fields: {', '.join(cls.field_names())})"
        elif err["type"] == "missing":
            message = "required" + (f" ({cls.doc(where)})" if where in cls.model_fields else "")
        elif err["type"] != "value_error":
            message = f"{err.get('input')!r}: {message[:1].lower()}{message[1:]}"
        found.append(SpecError(where, message))
    first = found[0]
    if len(found) == 1:
        return first
    return SpecError(first.field, str(first).split(": ", 1)[1] + "; also " + "; ".join(str(e) for e in found[1:]))
