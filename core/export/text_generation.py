"""Triton Python-backend model `text_generation`: text in, text out, streamed.

Written by the LLM Development Platform into a Triton model repository as
`text_generation/1/model.py`, beside the ONNX decoder model it calls. It
tokenises the prompt, runs the decode loop (each step a BLS call into the
decoder, with the KV cache it returns), and sends the text back piece by piece
as it grows (a decoupled model: one response per new piece, then a final flag).

    inputs   text_input  BYTES [1]           the prompt (raw text: apply a chat template client-side)
             max_tokens  INT32 [1] optional  new tokens at most (default: decoding.json)
             temperature FP32  [1] optional  0 = greedy (the default)
             seed        INT64 [1] optional  for sampling (default: a fresh one per request)
    output   text_output BYTES [1]           the next piece of text

It needs numpy and the `tokenizers` package in the Python backend's
environment. Outside Triton, `Decoding` runs the same loop with any `step`
function (the platform's tests run it on onnxruntime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: `Decoding` alone
    pb_utils = None

Step = Callable[[dict], dict]
"""One decoder call: input tensors by name -> output tensors by name (numpy)."""


class Decoding:
    """The decode loop over a decoder with a KV cache: tokens, then text pieces."""

    def __init__(self, folder: Path, step: Step) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        facts = json.loads((folder / "decoding.json").read_text())
        self.layers, self.kv_heads, self.head_dim = facts["layers"], facts["kv_heads"], facts["head_dim"]
        self.eos = set(facts["eos_token_ids"])
        self.max_tokens = facts["max_tokens"]
        self.context_length = facts.get("context_length") or 1 << 30
        self.step = step
        self.outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def tokens(self, prompt: list[int], max_tokens: int, temperature: float = 0.0, seed: Optional[int] = None) -> Iterator[int]:
        """New tokens one by one, greedy or sampled, until an end token or `max_tokens`."""
        if not prompt:
            raise ValueError("text_input is empty")
        if len(prompt) >= self.context_length:
            raise ValueError(f"the prompt is {len(prompt)} tokens: the model's context is {self.context_length}")
        max_tokens = min(max_tokens, self.context_length - len(prompt))
        rng = np.random.default_rng(seed)
        ids = np.array([prompt], dtype=np.int64)
        mask = np.ones_like(ids)
        positions = np.arange(len(prompt), dtype=np.int64)[None]
        past = {
            f"past_key_values.{i}.{kv}": np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
            for i in range(self.layers)
            for kv in ("key", "value")
        }
        for _ in range(max(0, max_tokens)):
            out = self.step({"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
            logits = out["logits"][0, -1].astype(np.float64)
            if temperature > 0:
                p = np.exp((logits - logits.max()) / temperature)
                token = int(rng.choice(len(p), p=p / p.sum()))
            else:
                token = int(np.argmax(logits))
            yield token
            if token in self.eos:
                return
            past = {f"past_key_values.{i}.{kv}": out[f"present.{i}.{kv}"] for i in range(self.layers) for kv in ("key", "value")}
            ids = np.array([[token]], dtype=np.int64)
            mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
            positions = np.array([[mask.shape[1] - 1]], dtype=np.int64)

    def pieces(self, text: str, max_tokens: int, temperature: float = 0.0, seed: Optional[int] = None) -> Iterator[str]:
        """The reply as text pieces, each new token's text once it is whole (a
        character split across tokens waits for its last byte); no end token.
        Each piece is read off the text of the last few tokens before it, so a
        tokenizer that drops the space at the start of a decoded text (Llama's,
        Mistral's) still gives it, and the work per token stays constant."""
        prompt = self.encode(text)
        ids = list(prompt)
        start, done = max(0, len(ids) - 5), len(ids)  # decode from `start`; text up to `done` was sent
        for token in self.tokens(prompt, max_tokens, temperature, seed):
            if token in self.eos:
                return
            ids.append(token)
            before = self.tokenizer.decode(ids[start:done])
            now = self.tokenizer.decode(ids[start:])
            if len(now) > len(before) and not now.endswith("\ufffd"):
                yield now[len(before):]
                start, done = done, len(ids)


class TritonPythonModel:
    """The Triton side: requests in, one response per piece, then the final flag."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.decoder = config["parameters"]["decoder_model"]["string_value"]
        folder = Path(args["model_repository"]) / args["model_version"]
        self.decoding = Decoding(folder, self._call_decoder)

    def _call_decoder(self, feed: dict) -> dict:
        request = pb_utils.InferenceRequest(
            model_name=self.decoder,
            requested_output_names=self.decoding.outputs,
            inputs=[pb_utils.Tensor(name, value) for name, value in feed.items()],
            # a decoder on the GPU answers in GPU memory, which numpy cannot read
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.decoding.outputs}

    @staticmethod
    def _optional(request, name: str, default):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
                text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
                max_tokens = int(self._optional(request, "max_tokens", self.decoding.max_tokens))
                temperature = float(self._optional(request, "temperature", 0.0))
                seed = self._optional(request, "seed", None)
                for piece in self.decoding.pieces(text, max_tokens, temperature, None if seed is None else int(seed)):
                    if sender.is_cancelled():  # the client went away: stop, free the model for the next
                        break
                    out = pb_utils.Tensor("text_output", np.array([piece.encode("utf-8")], dtype=np.object_))
                    sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # the client gets the reason, the server keeps serving
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
