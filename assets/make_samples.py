"""Rebuild the sample data sets in assets/samples/ (deterministic; written for
this project). Small, checkable tasks a 135M model can visibly learn on a CPU in
minutes: arithmetic, capitals, opposites, plurals, unit conversions, spelling.

    python assets/make_samples.py

instructions.jsonl  Alpaca-style instruction/input/output       (instruction)
chat.jsonl          OpenAI-style messages, some multi-turn        (chat)
preferences.jsonl   prompt/chosen/rejected                        (preference)
prompts.jsonl       prompts with a checkable answer, for PPO/GRPO (prompt)
text.jsonl          plain prose paragraphs                        (text)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "samples"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Australia": "Canberra",
    "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "Russia": "Moscow", "Ireland": "Dublin",
    "Austria": "Vienna", "Belgium": "Brussels", "Netherlands": "Amsterdam", "Switzerland": "Bern",
    "Hungary": "Budapest", "Czechia": "Prague", "Peru": "Lima", "Chile": "Santiago", "Colombia": "Bogota",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul", "Indonesia": "Jakarta",
    "Morocco": "Rabat", "Nigeria": "Abuja", "New Zealand": "Wellington",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down",
    "open": "closed", "early": "late", "full": "empty", "hard": "soft", "high": "low", "long": "short",
    "old": "new", "rich": "poor", "strong": "weak", "wet": "dry", "loud": "quiet", "near": "far",
    "thick": "thin", "heavy": "light", "clean": "dirty", "young": "old", "inside": "outside", "first": "last",
    "true": "false", "win": "lose", "buy": "sell", "push": "pull", "left": "right", "day": "night",
}
PLURALS = {
    "cat": "cats", "dog": "dogs", "box": "boxes", "child": "children", "mouse": "mice", "person": "people",
    "city": "cities", "leaf": "leaves", "knife": "knives", "tooth": "teeth", "foot": "feet", "man": "men",
    "woman": "women", "bus": "buses", "baby": "babies", "wolf": "wolves", "goose": "geese", "sheep": "sheep",
    "fish": "fish", "potato": "potatoes", "hero": "heroes", "church": "churches", "day": "days", "key": "keys",
}
WORDS = ["apple", "river", "planet", "garden", "window", "pencil", "rocket", "silver", "yellow", "button",
         "candle", "forest", "guitar", "jacket", "ladder", "marble", "orange", "pepper", "rabbit", "tomato"]
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant. Answer in one sentence.", ""]


def tasks(rng: random.Random) -> list[tuple[str, str, str]]:
    """(instruction, input, answer) triples."""
    out = []
    for _ in range(90):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(["+", "-", "*"])
        value = a + b if op == "+" else a - b if op == "-" else a * b
        out.append((f"What is {a} {op} {b}?", "", f"{a} {op} {b} = {value}."))
    for country, city in CAPITALS.items():
        out.append(("What is the capital of this country?", country, f"The capital of {country} is {city}."))
        out.append((f"Which city is the capital of {country}?", "", f"{city} is the capital of {country}."))
    for word, opposite in OPPOSITES.items():
        out.append(("Give the opposite of the word.", word, f"The opposite of \"{word}\" is \"{opposite}\"."))
    for word, plural in PLURALS.items():
        out.append((f"What is the plural of \"{word}\"?", "", f"The plural of \"{word}\" is \"{plural}\"."))
    for word in WORDS:
        out.append(("Spell the word backwards.", word, f"\"{word}\" backwards is \"{word[::-1]}\"."))
        out.append((f"How many letters are in the word \"{word}\"?", "", f"\"{word}\" has {len(word)} letters."))
        out.append(("Write the word in capital letters.", word, f"{word.upper()}"))
    for _ in range(50):
        km = rng.randint(1, 40)
        kind = rng.choice(["km", "kg", "hours"])
        if kind == "km":
            out.append((f"How many meters are in {km} kilometers?", "", f"{km} kilometers is {km * 1000} meters."))
        elif kind == "kg":
            out.append((f"How many grams are in {km} kilograms?", "", f"{km} kilograms is {km * 1000} grams."))
        else:
            out.append((f"How many minutes are in {km} hours?", "", f"{km} hours is {km * 60} minutes."))
    rng.shuffle(out)
    return out


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible but wrong or unhelpful answer (the rejected side)."""
    choice = rng.random()
    if choice < 0.35:
        return "I don't know."
    if choice < 0.6:
        return "That is not something I can help with."
    digits = [c for c in answer if c.isdigit()]
    if digits:
        return answer.replace(digits[-1], str((int(digits[-1]) + 3) % 10), 1)
    city = rng.choice(list(CAPITALS.values()))
    return f"It is {city}, probably."


def write(name: str, rows: list[dict]) -> None:
    path = OUT / name
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(HERE.parent)}: {len(rows)} rows")


def prompt_of(instruction: str, inp: str) -> str:
    return f"{instruction}\n\n{inp}" if inp else instruction


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = random.Random(1234)
    items = tasks(rng)

    write("instructions.jsonl", [{"instruction": i, "input": x, "output": a} for i, x, a in items])

    chat = []
    for k, (i, x, a) in enumerate(items[:320]):
        messages = []
        system = SYSTEMS[k % len(SYSTEMS)]
        if system:
            messages.append({"role": "system", "content": system})
        messages += [{"role": "user", "content": prompt_of(i, x)}, {"role": "assistant", "content": a}]
        if k % 4 == 0:  # a follow-up turn
            j, y, b = items[(k * 7 + 3) % len(items)]
            messages += [{"role": "user", "content": "And this one? " + prompt_of(j, y)}, {"role": "assistant", "content": b}]
        chat.append({"messages": messages})
    write("chat.jsonl", chat)

    write(
        "preferences.jsonl",
        [{"prompt": prompt_of(i, x), "chosen": a, "rejected": wrong_answer(a, rng)} for i, x, a in items[:320]],
    )

    prompts = []
    for _ in range(300):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        prompts.append({"prompt": f"What is {a} + {b}? Answer with the number only.", "solution": str(a + b)})
    write("prompts.jsonl", prompts)

    paragraphs = [p for p in (HERE / "corpus.txt").read_text(encoding="utf-8").split("\n\n") if 200 < len(p) < 1200]
    write("text.jsonl", [{"text": p} for p in paragraphs[:400]])


if __name__ == "__main__":
    main()
