"""Generate the built-in calibration sets shipped in src/rejuv_cli/calib/builtin/.

    .venv/bin/python bench/calib/make_builtin.py                # rewrite the checked-in files
    .venv/bin/python bench/calib/make_builtin.py --out /tmp/x   # anywhere else (tests do this)

math.jsonl: word problems written for this project from templates (names, objects and numbers
drawn with a fixed seed). Every worked step is `A op B ... = C` with C computed here, so the
arithmetic is right by construction; `check_steps` re-evaluates every step before writing.
tool_use.jsonl: chat dialogues in which the assistant calls a tool with a JSON object written
as plain text, a `tool` message returns the result and the assistant answers from it.

Output is deterministic: same seed, same bytes (tests compare the files byte for byte).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
from fractions import Fraction
from pathlib import Path

SEED = 20250611
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "src" / "rejuv_cli" / "calib" / "builtin"
PER_TEMPLATE = 5

NAMES = ["Amara", "Bilal", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jonas",
         "Kavya", "Liam", "Mei", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
         "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoe"]  # fmt: skip
ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("mug", "mugs"),
         ("candle", "candles"), ("sticker", "stickers"), ("muffin", "muffins"),
         ("battery", "batteries"), ("plant pot", "plant pots"), ("ticket", "tickets")]  # fmt: skip
MACHINES = [("printer", "pages"), ("bakery oven", "loaves"), ("robot arm", "parts"),
            ("bottling line", "bottles"), ("sewing machine", "patches")]  # fmt: skip
CLUBS = ["chess", "choir", "robotics", "drama", "swimming", "art"]
VEHICLES = ["train", "bus", "ferry", "cyclist", "truck"]
PRICEY = ["jacket", "desk lamp", "backpack", "pair of boots", "bicycle helmet", "kettle"]


def plural(n: int, word: str) -> str:
    """`1 hour`, `3 hours`: the prompts read as written English."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def fmt(x: Fraction | int) -> str:
    """A whole number as text (every value in these problems is whole; see `step`)."""
    x = Fraction(x)
    assert x.denominator == 1, f"{x} is not a whole number"
    return str(x.numerator)


def evaluate(expr: str) -> Fraction:
    """Exact value of an arithmetic expression of whole numbers, + - * / and parentheses."""
    assert re.fullmatch(r"[\d+\-*/() ]+", expr), expr
    # Every literal becomes a Fraction, so `/` is exact division, never float rounding.
    return eval(re.sub(r"\d+", r"F(\g<0>)", expr), {"__builtins__": {}}, {"F": Fraction})


def step(label: str, expr: str, unit: str = "") -> tuple[str, Fraction]:
    """One worked line `label: expr = value unit.`; the value is computed from `expr` itself."""
    value = evaluate(expr)
    return f"{label}: {expr} = {fmt(value)}{' ' + unit if unit else ''}.", value


def solution(steps: list[tuple[str, Fraction]]) -> str:
    """The response: the steps, one per line, then `Answer: N` with N the last step's value."""
    return "\n".join([s for s, _ in steps] + [f"Answer: {fmt(steps[-1][1])}"])


STEP = re.compile(r"^[^:\n]+: ([\d+\-*/() ]+) = (\d+)\b", re.MULTILINE)


def check_steps(response: str) -> None:
    """Re-read a written response and re-evaluate every step from its text (independent of the
    values the template computed): each `expr = value` holds and the answer is the last value."""
    found = STEP.findall(response)
    assert found, response
    for expr, value in found:
        assert evaluate(expr) == int(value), f"{expr} != {value}"
    assert response.endswith(f"\nAnswer: {found[-1][1]}"), response


# Each template takes the generator and returns (prompt, response). Numbers are drawn so that
# every division is exact and every answer is a whole number.
def shopping(r):
    name = r.choice(NAMES)
    (_, a2), (_, b2) = r.sample(ITEMS, 2)
    na, pa, nb, pb = r.randint(2, 9), r.randint(2, 15), r.randint(2, 9), r.randint(2, 15)
    prompt = (
        f"{name} buys {na} {a2} at ${pa} each and {nb} {b2} at ${pb} each. "
        f"How many dollars does {name} spend in total?"
    )
    s1 = step(f"Cost of the {a2}", f"{na} * {pa}", "dollars")
    s2 = step(f"Cost of the {b2}", f"{nb} * {pb}", "dollars")
    s3 = step("Total", f"{fmt(s1[1])} + {fmt(s2[1])}", "dollars")
    return prompt, solution([s1, s2, s3])


def change(r):
    name = r.choice(NAMES)
    one, many = r.choice(ITEMS)
    n, price = r.randint(2, 8), r.randint(3, 12)
    bill = next(b for b in (20, 50, 100, 200) if b > n * price)
    prompt = (
        f"{article(one).capitalize()} costs ${price}. {name} buys {n} {many} and pays with "
        f"a ${bill} bill. How much change, in dollars, should {name} get back?"
    )
    s1 = step("Cost", f"{n} * {price}", "dollars")
    s2 = step("Change", f"{bill} - {fmt(s1[1])}", "dollars")
    return prompt, solution([s1, s2])


def discount(r):
    one = r.choice(PRICEY)
    price, off = 20 * r.randint(2, 15), r.choice([10, 15, 20, 25, 30, 40, 45])
    prompt = (
        f"{article(one).capitalize()} normally sells for ${price}. This week it is {off}% off. "
        "What is the sale price in dollars?"
    )
    s1 = step("Discount", f"{price} * {off} / 100", "dollars")
    s2 = step("Sale price", f"{price} - {fmt(s1[1])}", "dollars")
    return prompt, solution([s1, s2])


def two_legs(r):
    v = r.choice(VEHICLES)
    s1v, t1, s2v, t2 = r.randint(3, 12) * 5, r.randint(1, 4), r.randint(3, 12) * 5, r.randint(1, 3)
    prompt = (
        f"A {v} travels at {s1v} km/h for {plural(t1, 'hour')}, then at {s2v} km/h for "
        f"{plural(t2, 'hour')}. "
        "How many kilometres does it cover altogether?"
    )
    a = step("First part", f"{s1v} * {t1}", "km")
    b = step("Second part", f"{s2v} * {t2}", "km")
    c = step("Total distance", f"{fmt(a[1])} + {fmt(b[1])}", "km")
    return prompt, solution([a, b, c])


def work_rate(r):
    machine, things = r.choice(MACHINES)
    rate, minutes, done = r.randint(3, 15), r.randint(4, 20), r.randint(1, 3)
    total = rate * (minutes + done)
    prompt = (
        f"A {machine} produces {rate} {things} per minute. It has already run for "
        f"{plural(done, 'minute')}. How many more minutes does it need to reach {total} "
        f"{things} in all?"
    )
    a = step("Already made", f"{rate} * {done}", things)
    b = step("Still to make", f"{total} - {fmt(a[1])}", things)
    c = step("Minutes needed", f"{fmt(b[1])} / {rate}", "minutes")
    return prompt, solution([a, b, c])


def fractions(r):
    club_a, club_b = r.sample(CLUBS, 2)
    n = 15 * r.randint(2, 8)
    prompt = (
        f"A school year group has {n} students. Two fifths of them are in the {club_a} "
        f"club. One third of the remaining students are in the {club_b} club. "
        "How many students are in neither club?"
    )
    a = step(f"In {club_a}", f"{n} * 2 / 5", "students")
    b = step("Remaining", f"{n} - {fmt(a[1])}", "students")
    c = step(f"In {club_b}", f"{fmt(b[1])} / 3", "students")
    d = step("In neither", f"{fmt(b[1])} - {fmt(c[1])}", "students")
    return prompt, solution([a, b, c, d])


def ages(r):
    older, younger = r.sample(NAMES, 2)
    k, young, years = r.randint(2, 4), r.randint(3, 12), r.randint(2, 10)
    total = k * young + young + 2 * years
    prompt = (
        f"{older} is {k} times as old as {younger}. In {years} years their ages will add "
        f"up to {total}. How old is {older} now?"
    )
    a = step("Sum of their ages now", f"{total} - 2 * {years}", "years")
    b = step(f"{younger}'s age", f"{fmt(a[1])} / ({k} + 1)", "years")
    c = step(f"{older}'s age", f"{k} * {fmt(b[1])}", "years")
    return prompt, solution([a, b, c])


def fence(r):
    name = r.choice(NAMES)
    length, width, cost = r.randint(6, 30), r.randint(3, 20), r.randint(4, 18)
    prompt = (
        f"{name}'s rectangular garden is {length} m long and {width} m wide. Fencing costs "
        f"${cost} per metre. How many dollars does it cost to fence the whole garden?"
    )
    a = step("Perimeter", f"2 * ({length} + {width})", "m")
    b = step("Cost", f"{fmt(a[1])} * {cost}", "dollars")
    return prompt, solution([a, b])


def carpet(r):
    length, width = r.randint(3, 9), r.randint(2, 7)
    cut_l, cut_w, price = r.randint(1, length - 1), r.randint(1, width - 1), r.randint(8, 30)
    prompt = (
        f"An L-shaped room is a {length} m by {width} m rectangle with a {cut_l} m by "
        f"{cut_w} m corner cut out. Carpet costs ${price} per square metre. "
        "How many dollars does carpet for the room cost?"
    )
    a = step("Full rectangle", f"{length} * {width}", "square metres")
    b = step("Corner cut out", f"{cut_l} * {cut_w}", "square metres")
    c = step("Room area", f"{fmt(a[1])} - {fmt(b[1])}", "square metres")
    d = step("Cost", f"{fmt(c[1])} * {price}", "dollars")
    return prompt, solution([a, b, c, d])


def ribbon(r):
    name = r.choice(NAMES)
    piece = r.choice([5, 10, 20, 25, 40, 50])
    metres = r.randint(2, 12)
    prompt = (
        f"{name} has a ribbon {metres} m long and cuts it into pieces of {piece} cm each. "
        f"How many pieces does {name} get?"
    )
    a = step("Length in centimetres", f"{metres} * 100", "cm")
    b = step("Pieces", f"{fmt(a[1])} / {piece}", "pieces")
    return prompt, solution([a, b])


def episodes(r):
    name = r.choice(NAMES)
    n, hours, mins = r.randint(3, 12), r.randint(0, 1), r.choice([15, 20, 25, 30, 45, 50])
    length = f"{hours} hour {mins} minutes" if hours else f"{mins} minutes"
    prompt = (
        f"Each episode of a series lasts {length}. {name} watches {n} episodes. "
        "How many minutes is that in total?"
    )
    a = step("One episode", f"{hours} * 60 + {mins}", "minutes")
    b = step("All episodes", f"{n} * {fmt(a[1])}", "minutes")
    return prompt, solution([a, b])


def savings(r):
    name = r.choice(NAMES)
    spend, net, weeks = r.randint(5, 30), r.randint(5, 25), r.randint(4, 16)
    earn, goal = spend + net, net * weeks
    prompt = (
        f"{name} earns ${earn} a week from a part-time job and spends ${spend} of it. "
        f"How many weeks does it take to save ${goal}?"
    )
    a = step("Saved per week", f"{earn} - {spend}", "dollars")
    b = step("Weeks", f"{goal} / {fmt(a[1])}", "weeks")
    return prompt, solution([a, b])


def average(r):
    name = r.choice(NAMES)
    target = r.randint(70, 90)
    scores = [r.randint(target - 12, min(target + 10, 100)) for _ in range(3)]
    need = 4 * target - sum(scores)
    while not 0 <= need <= 100:  # redraw so the fourth score is a possible test score
        scores = [r.randint(target - 12, min(target + 10, 100)) for _ in range(3)]
        need = 4 * target - sum(scores)
    prompt = (
        f"{name} scored {scores[0]}, {scores[1]} and {scores[2]} on three tests. What must "
        f"{name} score on the fourth test to average exactly {target}?"
    )
    a = step("Total needed", f"4 * {target}", "points")
    b = step("Scored so far", f"{scores[0]} + {scores[1]} + {scores[2]}", "points")
    c = step("Fourth test", f"{fmt(a[1])} - {fmt(b[1])}", "points")
    return prompt, solution([a, b, c])


def ratio(r):
    x, y = r.sample(NAMES, 2)
    a, b = r.choice([(1, 2), (2, 3), (3, 4), (2, 5), (3, 5), (4, 5), (5, 7), (3, 7), (1, 4)])
    if r.random() < 0.5:
        a, b = b, a
    total = (a + b) * r.randint(3, 20)
    prompt = (
        f"{x} and {y} share ${total} in the ratio {a}:{b}. How many dollars more does the "
        "one with the larger share receive?"
    )
    s1 = step("One part", f"{total} / ({a} + {b})", "dollars")
    s2 = step("Difference", f"({max(a, b)} - {min(a, b)}) * {fmt(s1[1])}", "dollars")
    return prompt, solution([s1, s2])


def interest(r):
    name = r.choice(NAMES)
    principal, rate, years = 100 * r.randint(5, 60), r.randint(2, 8), r.randint(2, 6)
    prompt = (
        f"{name} deposits ${principal} at {rate}% simple interest per year. How many "
        f"dollars are in the account after {years} years?"
    )
    a = step("Interest per year", f"{principal} * {rate} / 100", "dollars")
    b = step("Interest in total", f"{fmt(a[1])} * {years}", "dollars")
    c = step("Balance", f"{principal} + {fmt(b[1])}", "dollars")
    return prompt, solution([a, b, c])


def boxes(r):
    one, many = r.choice(ITEMS)
    per_box, full, loose = r.randint(6, 24), r.randint(3, 12), r.randint(1, 5)
    sold = r.randint(5, per_box * full // 2)
    prompt = (
        f"A shop has {full} boxes of {many} with {per_box} in each box, plus {loose} loose "
        f"{many if loose > 1 else one}. It sells {sold}. How many {many} are left?"
    )
    a = step("In boxes", f"{full} * {per_box}", many)
    b = step("In stock", f"{fmt(a[1])} + {loose}", many)
    c = step("Left", f"{fmt(b[1])} - {sold}", many)
    return prompt, solution([a, b, c])


MATH_TEMPLATES = [shopping, change, discount, two_legs, work_rate, fractions, ages, fence,
                  carpet, ribbon, episodes, savings, average, ratio, interest, boxes]  # fmt: skip


SYSTEM = (
    "You are a helpful assistant that can use tools. To call a tool, reply with only a JSON "
    'object {"tool": NAME, "arguments": {...}}; the result comes back in a tool message. '
    "Tools: calculator(expression) evaluates arithmetic with + - * / and parentheses; "
    "convert_units(value, from_unit, to_unit) converts km, mi, kg, lb, C and F; "
    "days_between(start, end) counts the days between two ISO dates."
)
FACTORS = {("km", "mi"): 0.621371, ("mi", "km"): 1.609344, ("kg", "lb"): 2.204623,
           ("lb", "kg"): 0.45359237}  # fmt: skip
UNIT_WORDS = {"km": "kilometres", "mi": "miles", "kg": "kilograms", "lb": "pounds",
              "C": "degrees Celsius", "F": "degrees Fahrenheit"}  # fmt: skip


def num(x) -> str:
    """A tool result as text: whole numbers plainly, others rounded to 2 decimals."""
    x = round(float(x), 2)
    return str(int(x)) if x == int(x) else f"{x:.2f}".rstrip("0")


def convert(value, src: str, dst: str) -> str:
    if (src, dst) == ("C", "F"):
        return num(value * 9 / 5 + 32)
    if (src, dst) == ("F", "C"):
        return num((value - 32) * 5 / 9)
    return num(value * FACTORS[src, dst])


def call(tool: str, **arguments) -> dict:
    """The assistant's tool call, as plain-text JSON so any chat template can render it."""
    return {"role": "assistant", "content": json.dumps({"tool": tool, "arguments": arguments})}


def result(value: str) -> dict:
    return {"role": "tool", "content": json.dumps({"result": json.loads(value)})}


def dialogue(*turns: dict) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, *turns]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def say(text: str) -> dict:
    return {"role": "assistant", "content": text}


def t_percent(r):
    whole, pct = r.randint(120, 9800), r.choice([3, 7, 12, 15, 18, 23, 35, 42, 65])
    expr = f"{whole} * {pct} / 100"
    value = num(evaluate(expr))
    return dialogue(user(f"What is {pct}% of {whole}?"), call("calculator", expression=expr),
                    result(value), say(f"{pct}% of {whole} is {value}."))  # fmt: skip


def t_convert(r):
    src, dst = r.choice(sorted(FACTORS))
    value = r.randint(2, 250)
    out = convert(value, src, dst)
    ask = f"How many {UNIT_WORDS[dst]} is {value} {UNIT_WORDS[src]}?"
    return dialogue(user(ask), call("convert_units", value=value, from_unit=src, to_unit=dst),
                    result(out), say(f"{value} {UNIT_WORDS[src]} is about {out} "
                                     f"{UNIT_WORDS[dst]}."))  # fmt: skip


def t_temperature(r):
    city = r.choice(["Lisbon", "Nairobi", "Oslo", "Hanoi", "Lima", "Perth", "Tunis", "Quito"])
    src = r.choice(["C", "F"])
    value = r.randint(-5, 38) if src == "C" else r.randint(20, 100)
    out = convert(value, src, "F" if src == "C" else "C")
    dst = "F" if src == "C" else "C"
    scale = UNIT_WORDS[dst].split()[1]  # "Fahrenheit"
    ask = f"The forecast for {city} says {value} {UNIT_WORDS[src]}. What is that in {scale}?"
    return dialogue(user(ask), call("convert_units", value=value, from_unit=src, to_unit=dst),
                    result(out), say(f"{value} {UNIT_WORDS[src]} is about {out} "
                                     f"{UNIT_WORDS[dst]}."))  # fmt: skip


def dates(r) -> tuple[dt.date, dt.date]:
    start = dt.date(2023, 1, 1) + dt.timedelta(days=r.randint(0, 1000))
    return start, start + dt.timedelta(days=r.randint(9, 400))


def t_days(r):
    start, end = dates(r)
    days = str((end - start).days)
    event = r.choice(["my exam", "the conference", "our trip", "the product launch", "the move"])
    ask = f"Today is {start.isoformat()} and {event} is on {end.isoformat()}. How many days away?"
    return dialogue(user(ask), call("days_between", start=start.isoformat(), end=end.isoformat()),
                    result(days), say(f"{event.capitalize()} is {days} days away."))  # fmt: skip


def t_weeks(r):
    start, end = dates(r)
    days = (end - start).days
    expr = f"{days} / 7"
    weeks = num(evaluate(expr))
    ask = (
        f"I started a habit on {start.isoformat()}. How many weeks will it be on {end.isoformat()}?"
    )
    return dialogue(user(ask), call("days_between", start=start.isoformat(), end=end.isoformat()),
                    result(str(days)), call("calculator", expression=expr), result(weeks),
                    say(f"That is {days} days, or about {weeks} weeks."))  # fmt: skip


def t_split_bill(r):
    bill, tip, people = r.randint(40, 400), r.choice([10, 12, 15, 18, 20]), r.randint(2, 8)
    e1 = f"{bill} * (100 + {tip}) / 100"
    total = num(evaluate(e1))
    e2 = f"{total} / {people}"
    share = num(float(Fraction(total)) / people)
    ask = (
        f"Our dinner bill is ${bill}. We want to add a tip of {tip}% and split it evenly between "
        f"{people} people. How much does each person pay?"
    )
    return dialogue(user(ask), call("calculator", expression=e1), result(total),
                    call("calculator", expression=e2), result(share),
                    say(f"With the tip the total is ${total}, so each person pays about "
                        f"${share}."))  # fmt: skip


def t_follow_up(r):
    src, dst = r.choice([("kg", "lb"), ("lb", "kg"), ("km", "mi"), ("mi", "km")])
    a, b = r.sample(range(3, 120), 2)
    out_a, out_b = convert(a, src, dst), convert(b, src, dst)
    w_src, w_dst = UNIT_WORDS[src], UNIT_WORDS[dst]
    return dialogue(user(f"Convert {a} {w_src} to {w_dst}, please."),
                    call("convert_units", value=a, from_unit=src, to_unit=dst), result(out_a),
                    say(f"{a} {w_src} is about {out_a} {w_dst}."), user(f"And {b} {w_src}?"),
                    call("convert_units", value=b, from_unit=src, to_unit=dst), result(out_b),
                    say(f"{b} {w_src} is about {out_b} {w_dst}."))  # fmt: skip


def t_recipe(r):
    dish = r.choice(["pancakes", "bread rolls", "lentil soup", "flatbreads", "cookies"])
    grams, serves, want = 25 * r.randint(4, 24), r.randint(2, 6), r.randint(7, 30)
    expr = f"{grams} * {want} / {serves}"
    value = num(evaluate(expr))
    ask = (
        f"My {dish} recipe uses {grams} g of flour and serves {serves}. How much flour do I "
        f"need for {want} people?"
    )
    return dialogue(user(ask), call("calculator", expression=expr), result(value),
                    say(f"You need about {value} g of flour for {want} people."))  # fmt: skip


TOOL_TEMPLATES = [t_percent, t_convert, t_temperature, t_days, t_weeks, t_split_bill,
                  t_follow_up, t_recipe]  # fmt: skip


def make_math(r: random.Random) -> list[dict]:
    rows = []
    for _ in range(PER_TEMPLATE):  # interleave templates, so any prefix of the file is varied
        for template in MATH_TEMPLATES:
            prompt, response = template(r)
            check_steps(response)
            rows.append({"prompt": prompt, "response": response})
    return rows


def make_tool_use(r: random.Random) -> list[dict]:
    return [{"messages": t(r)} for _ in range(PER_TEMPLATE) for t in TOOL_TEMPLATES]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    math_rows = make_math(random.Random(SEED))
    tool_rows = make_tool_use(random.Random(SEED + 1))
    write_jsonl(args.out / "math.jsonl", math_rows)
    write_jsonl(args.out / "tool_use.jsonl", tool_rows)
    print(f"wrote {len(math_rows)} math and {len(tool_rows)} tool_use examples to {args.out}")


if __name__ == "__main__":
    main()
