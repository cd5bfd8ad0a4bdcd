"""Generate the demo's data: support-ticket triage as a JSON record, plus what forgetting is measured
on (a general-knowledge set, an instruction-following set) and replay data to mitigate it.

Seeded and deterministic: `python experiments/make_demo_data.py` rewrites experiments/data/ with
the same bytes every time. The committed files are its output.

The task: read a support ticket, reply with {"category": ..., "product": ..., "priority": ...}.
Every label is recoverable from the text (the product is named, the category follows from what
the customer asks about, the priority from how they describe the impact), so a small model can
learn it from a few hundred examples, but an untuned one does not answer in that format.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).parent / "data"
SEED = 20261122

PRODUCTS = ["CloudSync", "PayFlow", "MailPilot", "DataVault", "TaskBoard", "ChatDesk"]
CATEGORIES = ["billing", "technical", "account", "feature_request"]
PRIORITIES = ["low", "medium", "high", "urgent"]

# What the customer writes about, per category. {p} is the product.
ISSUES = {
    "billing": [
        "I was charged twice for my {p} subscription this month.",
        "My {p} invoice shows the wrong amount.",
        "Can you refund the {p} annual plan I bought by mistake?",
        "The {p} renewal fee went up without notice.",
        "I cancelled {p} but my card was still billed.",
        "Please send me a VAT invoice for {p}.",
        "My payment for {p} keeps getting declined although the card is fine.",
    ],
    "technical": [
        "{p} crashes every time I open the settings page.",
        "{p} is not syncing my files since the last update.",
        "I get an error 500 when I log in to {p}.",
        "{p} is extremely slow to load on my laptop.",
        "The {p} mobile app freezes on the start screen.",
        "Exports from {p} come out as empty files.",
        "Notifications from {p} stopped arriving.",
    ],
    "account": [
        "I cannot reset my {p} password, the email never arrives.",
        "Please change the email address on my {p} account.",
        "My {p} account got locked after too many login attempts.",
        "How do I add a second admin to our {p} workspace?",
        "I want to delete my {p} account and all my data.",
        "Two-factor login for {p} no longer accepts my codes.",
        "Please merge my two {p} accounts into one.",
    ],
    "feature_request": [
        "It would be great if {p} had a dark mode.",
        "Could {p} support exporting to CSV?",
        "Please add a calendar view to {p}.",
        "I would love keyboard shortcuts in {p}.",
        "Can {p} integrate with Slack in a future release?",
        "We would like {p} to offer single sign-on.",
        "Any plans for an offline mode in {p}?",
    ],
}

# How the customer describes the impact, per priority.
CUES = {
    "low": [
        "No rush, whenever you have time.",
        "Just a minor thing, not urgent at all.",
        "This can wait until next week.",
        "Low priority on our side.",
    ],
    "medium": [
        "It is annoying but I can work around it for now.",
        "Would be good to sort this out this week.",
        "Not blocking, but it affects my daily work.",
        "Please look into it when you can this week.",
    ],
    "high": [
        "This is blocking my team today.",
        "Several colleagues are affected, please help soon.",
        "We need this fixed by tomorrow.",
        "This is holding up an important client project.",
    ],
    "urgent": [
        "URGENT: our whole company is down right now!",
        "Production is stopped, please respond immediately.",
        "This is an emergency, we are losing money every minute.",
        "Critical: all our customers are affected right now.",
    ],
}

GREETINGS = ["Hi,", "Hello support,", "Dear team,", "Hey there,", "Good morning,", ""]
SIGNOFFS = ["Thanks, {n}", "Best regards, {n}", "- {n}", "Cheers, {n}", "{n}", ""]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jules", "Kemi",
         "Lars", "Mei", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tom"]

TASK_INSTRUCTION = "Triage this support ticket as JSON (category, product, priority).\n\n"


def make_ticket(rng: random.Random) -> dict:
    """One ticket: its text and the record a triager would write for it."""
    category = rng.choice(CATEGORIES)
    product = rng.choice(PRODUCTS)
    priority = rng.choice(PRIORITIES)
    issue = rng.choice(ISSUES[category]).format(p=product)
    cue = rng.choice(CUES[priority])
    body = f"{issue} {cue}" if rng.random() < 0.6 else f"{cue} {issue}"
    name = rng.choice(NAMES)
    parts = [rng.choice(GREETINGS), body, rng.choice(SIGNOFFS).format(n=name)]
    text = "\n".join(p for p in parts if p)
    record = {"category": category, "product": product, "priority": priority}
    return {"text": text, "record": record}


def wrong_record(rng: random.Random, record: dict) -> dict:
    """A plausible wrong answer: the right shape with one field changed."""
    field = rng.choice(["category", "product", "priority"])
    choices = {"category": CATEGORIES, "product": PRODUCTS, "priority": PRIORITIES}[field]
    wrong = dict(record)
    wrong[field] = rng.choice([c for c in choices if c != record[field]])
    return wrong


def as_json(record: dict) -> str:
    return json.dumps(record)


# Questions SmolLM2-135M-Instruct answers correctly before any tuning (checked by running the
# `base` variant of experiments/demo.yaml), so a drop after tuning means something was forgotten.
GENERAL = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("What is the capital of Italy?", ["Rome"]),
    ("What is the capital of Germany?", ["Berlin"]),
    ("What is the capital of Spain?", ["Madrid"]),
    ("What is the capital of England?", ["London"]),
    ("What is the chemical symbol for water?", ["H2O", "H₂O"]),
    ("What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "CO2"]),
    ("How many days are there in a week?", ["seven", "7"]),
    ("How many continents are there on Earth?", ["seven", "7"]),
    ("Who painted the Mona Lisa?", ["Leonardo", "da Vinci"]),
    ("What is the boiling point of water in degrees Celsius?", ["100"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("What is the tallest mountain in the world?", ["Everest"]),
    ("What is the opposite of hot?", ["cold"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("What is the main language spoken in Brazil?", ["Portuguese"]),
    ("What is 2 plus 2?", ["4", "four"]),
    ("What is 10 times 10?", ["100", "hundred"]),
    ("What is the currency of the United States?", ["dollar"]),
    ("Which organ pumps blood through the human body?", ["heart"]),
    ("What do bees make?", ["honey"]),
    ("What is the longest river in Africa?", ["Nile"]),
]


# Instruction following, in the manner of IFEval: each prompt carries an instruction whose outcome
# can be checked mechanically. Each item lists the exact strings (case and punctuation count) that an
# output following it must contain (`must_include`), so one rubric fits every row
# (rubrics/instruction_following.yaml); `kind` names the instruction, for slicing.
# Like GENERAL, only items SmolLM2-135M-Instruct follows before any tuning (greedy, 32 new tokens,
# checked by running a `base` variant on this set with that rubric): of 46 candidates it passed 37;
# the 9 it failed were dropped (a postscript, <<title>> brackets, "stop" in capitals, a JSON list,
# "'apple' in double quotes", starting with "Yes,", a question about food, "mentions 'coffee'",
# "8 minus 3 as a digit"), so were 2 it passed only in the letter (a "- " list with no vegetables, a
# note quoting "Sam" but not signed) and 5 near-duplicates. 4 whose check did not cover the whole
# instruction ("just the number" answered "The answer is 24.", "start with 'Sure' and name a fruit"
# answered "Sure.") were reworded so that it does and checked again: 3 passed and stayed, the fourth
# (hours in a day, in digits) was dropped. 29 items remain.
INSTRUCTIONS = [
    ("keyword", "Write a sentence that contains the word 'river'.", ["river"]),
    ("keyword", "Write one sentence about the sea that uses the word 'waves'.", ["waves"]),
    ("keyword", "Write a short sentence about winter that includes the word 'snow'.", ["snow"]),
    ("keyword", "Write a sentence about a garden using the words 'flowers' and 'bees'.", ["flowers", "bees"]),
    ("keyword", "Describe a library in one sentence, using the word 'books'.", ["books"]),
    ("keyword", "Write one sentence about music that uses the word 'guitar'.", ["guitar"]),
    ("start", "Write a sentence that starts with the word 'Today'.", ["Today"]),
    ("start", "Write a sentence that begins with 'Once upon a time'.", ["Once upon a time"]),
    ("start", "Write a sentence beginning with 'In the morning'.", ["In the morning"]),
    ("start", "Answer this request, starting your reply with the word 'Sure': can you help me?", ["Sure"]),
    ("punctuation", "Write a question about the weather.", ["?"]),
    ("punctuation", "Write a question you could ask a new classmate.", ["?"]),
    ("punctuation", "Write an excited sentence about a birthday party, ending with an exclamation mark.", ["!"]),
    ("list", "List three fruits as a numbered list.", ["1.", "2.", "3."]),
    ("list", "Give a numbered list of three animals.", ["1.", "2.", "3."]),
    ("list", "Name three colours as a numbered list.", ["1.", "2.", "3."]),
    ("list", "List three fruits, one per line.", ["\n"]),
    ("list", "List the numbers 1 to 3, one per line.", ["1", "\n", "2", "3"]),
    ("json", 'Respond in JSON with a key "name" set to "Ana".', ['"name": "Ana"']),
    ("json", 'Give a JSON object with the key "colour" and the value "red".', ['"colour": "red"']),
    ("case", "Write the word 'HELLO' in capital letters.", ["HELLO"]),
    ("repeat", "Repeat this sentence exactly: Please close the door.", ["Please close the door."]),
    ("repeat", "Repeat this sentence exactly: Birds sing in the morning.", ["Birds sing in the morning."]),
    ("repeat", "Repeat exactly: Hello world.", ["Hello world."]),
    ("repeat", "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog.",
     ["The quick brown fox jumps over the lazy dog."]),
    ("repeat", "Repeat this sentence exactly: Learning never stops.", ["Learning never stops."]),
    ("digits", "What is 3 + 4? Write the answer as a digit.", ["7"]),
    ("digits", "Write the number twenty in digits.", ["20"]),
    ("digits", "How many months are in a year? Write the answer in digits.", ["12"]),
]

# Replay data for a forgetting mitigation: general skills (facts, arithmetic, word tasks) as short
# prompt/completion pairs, answered in one short sentence, the style the model should keep. None of
# it may touch what the evaluation sets ask, or replay would teach the test: `check_replay_disjoint`
# refuses any replay item that names an evaluation item's key entity or repeats its sum. Replay
# shares kinds of question with general_knowledge.jsonl (capitals, "what is N plus M"), never a fact.
REPLAY_CAPITALS = [
    ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Kenya", "Nairobi"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"),
    ("Turkey", "Ankara"), ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"),
]
REPLAY_FACTS = [
    ("What is the largest planet in our solar system?", "The largest planet in our solar system is Jupiter."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many sides does a square have?", "A square has four sides."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("Who invented the telephone?", "Alexander Graham Bell invented the telephone."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("In which country are the pyramids of Giza?", "The pyramids of Giza are in Egypt."),
    ("Which instrument has black and white keys?", "The piano has black and white keys."),
    ("How many players does a football team have on the field?", "A football team has eleven players on the field."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies."),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado."),
    ("Which gas do humans need to breathe?", "Humans need oxygen to breathe."),
]
REPLAY_PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
                  ("goose", "geese"), ("woman", "women"), ("box", "boxes"), ("leaf", "leaves"),
                  ("city", "cities"), ("knife", "knives")]
REPLAY_PAST = [("run", "ran"), ("eat", "ate"), ("go", "went"), ("write", "wrote"), ("swim", "swam"),
               ("see", "saw"), ("take", "took"), ("buy", "bought"), ("think", "thought"), ("sing", "sang")]
REPLAY_OPPOSITES = [("big", "small"), ("fast", "slow"), ("happy", "sad"), ("early", "late"),
                    ("light", "dark"), ("full", "empty"), ("strong", "weak"), ("rich", "poor"),
                    ("loud", "quiet"), ("wet", "dry")]
REPLAY_SUMS = 30  # arithmetic items, drawn at random: a third each of plus, minus and times

# The key entities of the evaluation items, one tuple per item and in the same order: a replay item
# naming any of them (a whole word or phrase, any case, in its prompt or its completion) would ask the
# same fact again, however it is worded. Sums ("2 plus 2", "3 + 4") are compared by their numbers.
GENERAL_KEYS = [
    ("France",), ("Japan",), ("Italy",), ("Germany",), ("Spain",), ("England", "London"),
    ("water", "H2O"), ("photosynthesis", "carbon dioxide"), ("week",), ("continents", "continent"),
    ("Mona Lisa", "Leonardo"), ("boiling",), ("ocean", "Pacific"), ("mountain", "Everest"),
    ("hot", "cold"), ("spider", "spiders"), ("Brazil", "Portuguese"), (), (),
    ("United States", "dollar"), ("heart", "blood"), ("bees", "honey"), ("Nile", "Africa", "river"),
]
INSTRUCTION_KEYS = [
    ("river",), ("sea", "waves"), ("winter", "snow"), ("garden", "flowers", "bees"), ("library", "books"),
    ("music", "guitar"), ("Today",), ("Once upon a time",), ("In the morning",), ("Sure", "help"),
    ("weather",), ("classmate",), ("birthday", "party"), ("fruits",), ("animals",), ("colours",),
    ("fruits",), ("1 to 3",), ("JSON", "Ana"), ("JSON", "colour"), ("HELLO",), ("door",), ("Birds",),
    ("Hello world",), ("fox", "lazy dog"), ("Learning",), (), ("twenty",), ("months", "year"),
]
_SUM = re.compile(r"(\d+) ?(plus|minus|times|\+|-|×) ?(\d+)")
_OPERATION = {"+": "plus", "-": "minus", "×": "times"}


def sums_in(text: str) -> set[tuple[int, str, int]]:
    return {(int(a), _OPERATION.get(op, op), int(b)) for a, op, b in _SUM.findall(text)}


def names(text: str, key: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(key.casefold())}(?!\w)", text.casefold()) is not None


def replay_items(rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: capitals, facts, word tasks and random sums, shuffled."""
    items = [(f"What is the capital of {c}?", f"The capital of {c} is {city}.") for c, city in REPLAY_CAPITALS]
    items += REPLAY_FACTS
    items += [(f"What is the plural of '{w}'?", f"The plural of {w} is {p}.") for w, p in REPLAY_PLURALS]
    items += [(f"What is the past tense of '{w}'?", f"The past tense of {w} is {p}.") for w, p in REPLAY_PAST]
    items += [(f"What is the opposite of '{w}'?", f"The opposite of {w} is {o}.") for w, o in REPLAY_OPPOSITES]
    sums: set[tuple[int, str, int]] = set()
    while len(sums) < REPLAY_SUMS:
        op = ["plus", "minus", "times"][len(sums) % 3]
        a, b = (rng.randint(11, 60), rng.randint(2, 40)) if op != "times" else (rng.randint(2, 12), rng.randint(3, 12))
        if op == "minus" and b >= a:
            continue
        sums.add((a, op, b))
    for a, op, b in sorted(sums, key=lambda s: (s[1], s[0], s[2])):
        result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        items.append((f"What is {a} {op} {b}?", f"{a} {op} {b} is {result}."))
    rng.shuffle(items)
    return items


def check_replay_disjoint(replay: list[tuple[str, str]]) -> None:
    """Fail if a replay item asks an evaluation question, names an evaluation item's key entity or
    repeats its sum; and if an evaluation item has no key it names itself (the key lists drifted)."""
    eval_items = [(q, keys) for (q, _), keys in zip(GENERAL, GENERAL_KEYS, strict=True)]
    eval_items += [(prompt, keys) for (_, prompt, _), keys in zip(INSTRUCTIONS, INSTRUCTION_KEYS, strict=True)]
    for prompt, keys in eval_items:
        assert any(names(prompt, k) for k in keys) or sums_in(prompt), f"evaluation item {prompt!r}: no key it names"
    all_keys = {k for _, keys in eval_items for k in keys}
    eval_sums = set().union(*(sums_in(prompt) for prompt, _ in eval_items))
    eval_questions = {prompt.split("?")[0].casefold() for prompt, _ in eval_items}
    for prompt, completion in replay:
        named = sorted(k for k in all_keys if names(f"{prompt} {completion}", k))
        assert not named, f"replay item {prompt!r} names evaluation key(s) {named}"
        assert prompt.split("?")[0].casefold() not in eval_questions, f"replay item {prompt!r} is an evaluation question"
        assert not sums_in(prompt) & eval_sums, f"replay item {prompt!r} repeats an evaluation sum"


def main() -> None:
    rng = random.Random(SEED)
    seen: set[str] = set()

    def fresh_tickets(n: int) -> list[dict]:
        out = []
        while len(out) < n:
            t = make_ticket(rng)
            if t["text"] not in seen:  # no ticket text appears in two splits
                seen.add(t["text"])
                out.append(t)
        return out

    train, test, pref = fresh_tickets(320), fresh_tickets(120), fresh_tickets(200)
    OUT.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: list[dict]) -> None:
        with open(OUT / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    write("tickets_train.jsonl", [
        {"prompt": TASK_INSTRUCTION + t["text"], "completion": as_json(t["record"])} for t in train])
    # Eval samples carry ids, so that outputs of any other system can be matched to them
    # (`harness score --data`), and the fields the report slices by.
    write("tickets_test.jsonl", [
        {"id": f"ticket-{i:03d}", "prompt": TASK_INSTRUCTION + t["text"], "completion": as_json(t["record"]),
         "category": t["record"]["category"], "priority": t["record"]["priority"]} for i, t in enumerate(test, 1)])
    write("tickets_preference.jsonl", [
        {"prompt": TASK_INSTRUCTION + t["text"], "chosen": as_json(t["record"]),
         "rejected": as_json(wrong_record(rng, t["record"]))} for t in pref])
    write("general_knowledge.jsonl", [
        {"id": f"general-{i:02d}", "prompt": q + " Answer in one short sentence.", "completion": answers[0],
         "answers": answers}
        for i, (q, answers) in enumerate(GENERAL, 1)])
    write("instruction_following.jsonl", [
        {"id": f"instruct-{i:02d}", "prompt": prompt, "must_include": must_include, "kind": kind}
        for i, (kind, prompt, must_include) in enumerate(INSTRUCTIONS, 1)])

    # A stream of its own, so the ticket data above stays the same bytes whatever is added here.
    replay = replay_items(random.Random(SEED + 1))
    check_replay_disjoint(replay)
    write("general_replay.jsonl", [
        {"id": f"replay-{i:03d}", "prompt": prompt, "completion": completion}
        for i, (prompt, completion) in enumerate(replay, 1)])
    print(f"wrote {len(train)} train, {len(test)} test, {len(pref)} preference tickets, "
          f"{len(GENERAL)} general questions, {len(INSTRUCTIONS)} instruction-following items and "
          f"{len(replay)} replay pairs to {OUT}")


if __name__ == "__main__":
    main()
