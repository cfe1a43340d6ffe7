"""Small synthetic data sets for the README's fine-tuning recipes (no public data set is reachable offline).

    python examples/make_data.py --out examples/data

writes jokes.txt (one joke per line), recipes.csv (one recipe per row, column `recipe`), qa.jsonl
(prompt/completion pairs) and reviews.csv (text + sentiment label). Seeded: the same files every time.
They are made from templates, so a model learns them fast; they stand in for your own files.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

ANIMALS = ["cat", "dog", "duck", "cow", "owl", "horse", "goat", "frog", "bee", "snail", "penguin", "llama"]
PLACES = ["road", "library", "bakery", "playground", "river", "museum", "moon", "supermarket"]
REASONS = ["to get to the other side", "because the chicken was busy", "to prove it was not chicken",
           "to return an overdue book", "for the free samples", "to practise its dance moves",
           "because it heard there was cake", "to find its lost sock"]
FRUITS = {"banana": "yellow", "apple": "red", "lime": "green", "blueberry": "blue", "plum": "purple",
          "orange": "orange", "lemon": "yellow", "cherry": "red", "kiwi": "brown", "grape": "green",
          "strawberry": "red", "coconut": "brown", "raspberry": "red", "blackberry": "black", "peach": "pink"}
GOOD = ["wonderful", "delightful", "moving", "brilliant", "charming", "gripping", "superb", "funny"]
BAD = ["dull", "tedious", "clumsy", "boring", "predictable", "awful", "lifeless", "confusing"]
THINGS = ["the acting", "the plot", "the ending", "the music", "the dialogue", "the pacing", "the cast"]


def jokes(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        a, p = rng.choice(ANIMALS), rng.choice(PLACES)
        kind = rng.random()
        if kind < 0.5:
            out.append(f"Why did the {a} go to the {p}? {rng.choice(REASONS).capitalize()}.")
        elif kind < 0.8:
            b = rng.choice(ANIMALS)
            out.append(f"What do you call a {a} at the {p}? A {b} with a {a} problem.")
        else:
            out.append(f"A {a} walks into the {p}. The {p} says: we don't serve your kind. The {a} says: that's fine, "
                       f"I brought my own {rng.choice(['snacks', 'chair', 'jokes', 'umbrella'])}.")
    return out


def recipes(rng: random.Random, n: int) -> list[dict]:
    bases = ["pancakes", "soup", "bread", "salad", "pie", "stew", "muffins", "noodles"]
    extras = ["carrots", "apples", "cheese", "onions", "spinach", "mushrooms", "honey", "lentils"]
    rows = []
    for i in range(n):
        base, extra = rng.choice(bases), rng.choice(extras)
        cups, mins, deg = rng.randint(1, 4), rng.choice([10, 15, 20, 30, 45]), rng.choice([160, 180, 200])
        rows.append({"title": f"{extra.capitalize()} {base} #{i}",
                     "recipe": f"{extra.capitalize()} {base}\nIngredients: {cups} cups of flour, 2 eggs, "
                               f"a handful of {extra}.\nMethod: mix everything, rest for {mins} minutes, "
                               f"cook at {deg} degrees until golden. Serves {rng.randint(2, 6)}."})
    return rows


def qa(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        fruit = rng.choice(list(FRUITS))
        rows.append({"prompt": f"What color is a {fruit}?", "completion": f" A {fruit} is {FRUITS[fruit]}."})
    return rows


def reviews(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = GOOD if positive else BAD
        thing, other = rng.sample(THINGS, 2)
        text = rng.choice([f"{thing.capitalize()} was {rng.choice(words)}.",
                           f"I found {thing} {rng.choice(words)} and {other} {rng.choice(words)}.",
                           f"Honestly, a {rng.choice(words)} film: {thing} says it all."])
        rows.append({"text": text, "label": "positive" if positive else "negative"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="examples/data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    (out / "jokes.txt").write_text("\n".join(jokes(rng, 600)) + "\n")
    with open(out / "recipes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["title", "recipe"])
        w.writeheader()
        w.writerows(recipes(rng, 400))
    (out / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa(rng, 500)))
    with open(out / "reviews.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(reviews(rng, 600))
    print(f"wrote jokes.txt, recipes.csv, qa.jsonl, reviews.csv to {out}")


if __name__ == "__main__":
    main()
