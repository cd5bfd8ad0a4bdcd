"""Generate the demo's data: support-ticket triage as a JSON record, plus a general-knowledge set.

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
    print(f"wrote {len(train)} train, {len(test)} test, {len(pref)} preference tickets and "
          f"{len(GENERAL)} general questions to {OUT}")


if __name__ == "__main__":
    main()
