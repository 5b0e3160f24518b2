#!/usr/bin/env python3
"""Writes the demo's small R1-style SFT sample (our own text, no dataset behind it):

    recipes/data/r1_sample.jsonl       64 conversations the demo's `sft` stage trains on
    recipes/data/r1_sample_eval.jsonl   8 held-out conversations it evaluates on

Each row is {"messages": [{"role": "user", ...}, {"role": "assistant", "content": "<think>\\n...\\n</think>\\n\\n..."}]}
(a few rows have two user/assistant rounds), the layout of R1 distillation data such as OpenR1-Math: a short
reasoning trace in <think> tags, then the answer. Topics: sums and products worked in steps, word problems
(sharing, buying, counting legs), days of the week and clock times, and questions about a three-sentence
story. The numbers come from a fixed linear congruential generator, so the output never depends on the Python
version; rerun after editing:

    python3 recipes/data/make_r1_sample.py            # rewrites the two files next to this script
"""
import json
import os
import sys


class Lcg:
    """Numerical Recipes' 32-bit LCG: the same sequence on every platform and Python version."""

    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFF

    def next(self):
        self.state = (1664525 * self.state + 1013904223) & 0xFFFFFFFF
        return self.state >> 8

    def between(self, lo, hi):  # inclusive
        return lo + self.next() % (hi - lo + 1)

    def pick(self, items):
        return items[self.next() % len(items)]


NAMES = ["Mia", "Tom", "Lena", "Sam", "Ava", "Ben", "Zoe", "Leo", "Ivy", "Max", "Nora", "Eli"]
FRUIT = ["apples", "pears", "plums", "oranges", "lemons", "peaches"]
THINGS = ["marbles", "stickers", "shells", "stamps", "buttons", "pebbles"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ANIMALS = [("cats", 4), ("dogs", 4), ("hens", 2), ("ducks", 2), ("spiders", 8), ("beetles", 6)]
PLACES = ["under the old bridge", "behind the bakery", "next to the pond", "in the school garden",
          "at the top of the hill", "beside the red barn"]
OBJECTS = ["a blue kite", "a silver key", "a small wooden boat", "a striped scarf", "a jar of honey", "a paper lantern"]
PETS = [("dog", "Rex"), ("cat", "Pip"), ("rabbit", "Clover"), ("parrot", "Sunny"), ("goat", "Bramble")]
WEATHER = ["rainy", "windy", "sunny", "snowy", "foggy"]


def think(reasoning, answer):
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def addition(r):
    a, b = r.between(12, 89), r.between(12, 89)
    tens = b - b % 10
    step = f"{a} + {tens} = {a + tens}, then {a + tens} + {b % 10} = {a + b}." if b % 10 else f"{a} + {b} = {a + b}."
    return f"What is {a} + {b}?", think(f"Split {b} into {tens} and {b % 10}. {step}", f"{a} + {b} = {a + b}.")


def subtraction(r):
    a = r.between(40, 99)
    b = r.between(11, a - 5)
    ones = b % 10
    step = f"{a} - {b - ones} = {a - b + ones}, then {a - b + ones} - {ones} = {a - b}." if ones else f"{a} - {b} = {a - b}."
    return f"What is {a} - {b}?", think(f"Take away the tens first, then the ones. {step}", f"{a} - {b} = {a - b}.")


def product(r):
    a, b = r.between(3, 9), r.between(12, 29)
    while b % 10 == 0:
        b = r.between(12, 29)
    tens, ones = b - b % 10, b % 10
    return (f"What is {a} times {b}?",
            think(f"{a} x {b} = {a} x {tens} + {a} x {ones} = {a * tens} + {a * ones} = {a * b}.",
                  f"{a} times {b} is {a * b}."))


def buying(r):
    name, fruit = r.pick(NAMES), r.pick(FRUIT)
    have, more = r.between(2, 9), r.between(2, 9)
    return (f"{name} has {have} {fruit} and buys {more} more. How many {fruit} does {name} have now?",
            think(f"{name} starts with {have} and adds {more}. {have} + {more} = {have + more}.",
                  f"{name} has {have + more} {fruit}."))


def giving(r):
    name, friend, thing = r.pick(NAMES), r.pick(NAMES), r.pick(THINGS)
    while friend == name:
        friend = r.pick(NAMES)
    have = r.between(10, 30)
    give = r.between(2, have - 3)
    return (f"{name} had {have} {thing} and gave {give} to {friend}. How many {thing} does {name} have left?",
            think(f"Giving away means taking away: {have} - {give} = {have - give}.",
                  f"{name} has {have - give} {thing} left."))


def sharing(r):
    friends, each = r.between(2, 6), r.between(2, 7)
    total = friends * each
    thing = r.pick(["cookies", "grapes", "crayons", "cards"])
    return (f"{total} {thing} are shared equally among {friends} friends. How many does each friend get?",
            think(f"Sharing equally is dividing: {total} / {friends} = {each}, because {friends} x {each} = {total}.",
                  f"Each friend gets {each} {thing}."))


def legs(r):
    (animal, n), count = r.pick(ANIMALS), r.between(2, 7)
    return (f"How many legs do {count} {animal} have?",
            think(f"One of them has {n} legs, so {count} of them have {count} x {n} = {count * n}.",
                  f"{count} {animal} have {count * n} legs."))


def weekday(r):
    start, ahead = r.between(0, 6), r.between(2, 12)
    ahead += ahead == 7  # a whole week would be a trick question
    end = (start + ahead) % 7
    week = f"A week has 7 days, so {ahead} days ahead is the same weekday as {ahead % 7} days ahead. " if ahead > 7 else ""
    return (f"Today is {DAYS[start]}. What day of the week will it be in {ahead} days?",
            think(f"{week}Counting {ahead % 7} days on from {DAYS[start]} gives {DAYS[end]}.", f"It will be {DAYS[end]}."))


def clock(r):
    hour, minute, length = r.between(1, 10), r.pick([0, 15, 20, 30, 45]), r.pick([25, 40, 50, 70, 95])
    total = hour * 60 + minute + length
    end = f"{total // 60}:{total % 60:02d}"
    return (f"A film starts at {hour}:{minute:02d} and lasts {length} minutes. When does it end?",
            think(f"{hour}:{minute:02d} is {minute} minutes past {hour}. Adding {length} minutes gives "
                  f"{minute + length} minutes past {hour}, which is {end}.",
                  f"The film ends at {end}."))


def compare(r):
    a, b = r.between(10, 99), r.between(10, 99)
    while a == b:
        b = r.between(10, 99)
    big, small = max(a, b), min(a, b)
    why = (f"Both have {big // 10} tens; {big % 10} ones is more than {small % 10}." if big // 10 == small // 10
           else f"{big} has {big // 10} tens and {small} has only {small // 10}.")
    return f"Which number is larger, {a} or {b}?", think(why, f"{big} is larger than {small}.")


def story(r):
    name, (pet, pet_name) = r.pick(NAMES), r.pick(PETS)
    place, obj, weather = r.pick(PLACES), r.pick(OBJECTS), r.pick(WEATHER)
    text = (f"On a {weather} morning, {name} walked {pet_name} the {pet} to the park. "
            f"{pet_name} ran off and found {obj} {place}. {name} carried it home and put it on the kitchen table.")
    kind = r.between(0, 2)
    if kind == 0:
        q, reason, a = (f"Where did {pet_name} find {obj}?",
                        f"The second sentence says {pet_name} found {obj} {place}.", f"{place[0].upper()}{place[1:]}.")
    elif kind == 1:
        q, reason, a = (f"What kind of animal is {pet_name}?",
                        f"The story calls {pet_name} \"the {pet}\".", f"{pet_name} is a {pet}.")
    else:
        q, reason, a = ("What was the weather like?",
                        f"The story begins \"On a {weather} morning\".", f"It was {weather}.")
    return f"Read the story and answer.\n\n{text}\n\n{q}", think(reason, a)


KINDS = [addition, subtraction, product, buying, giving, sharing, legs, weekday, clock, compare, story]


def conversation(r, two_rounds):
    rounds = [r.pick(KINDS)(r) for _ in range(2 if two_rounds else 1)]
    messages = []
    for question, answer in rounds:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def main(out_dir):
    r = Lcg(20250101)
    rows = [conversation(r, two_rounds=(i % 8 == 7)) for i in range(72)]
    for name, part in (("r1_sample.jsonl", rows[:64]), ("r1_sample_eval.jsonl", rows[64:])):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(part)} conversations to {os.path.join(out_dir, name)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
