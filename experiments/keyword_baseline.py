"""A rules baseline for the demo task: the "external system" of the README's `harness score` example.

A handful of keywords per label, as a team might write before trying a model. It prints one JSON
object per eval sample (`id`, `output`) to standard output:

    python experiments/keyword_baseline.py > results/keywords.jsonl
    harness score rubrics/ticket_triage.yaml results/keywords.jsonl --data experiments/data/tickets_test.jsonl

Its outputs can be stored beside the tuned variants (`--db ... --experiment demo --suite tickets`),
so the report answers "is a model better than the rules we have?".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "tickets_test.jsonl"
PRODUCTS = ["CloudSync", "PayFlow", "MailPilot", "DataVault", "TaskBoard", "ChatDesk"]
CATEGORY_WORDS = {
    "billing": ["charged", "invoice", "refund", "fee", "billed", "payment", "vat"],
    "account": ["password", "account", "login", "admin", "locked", "two-factor"],
    "feature_request": ["would be great", "could", "please add", "would love", "plans for", "would like"],
}
PRIORITY_WORDS = {
    "urgent": ["urgent", "emergency", "immediately", "critical", "right now"],
    "high": ["blocking", "tomorrow", "important", "colleagues"],
    "low": ["no rush", "minor", "can wait", "low priority"],
}


def triage(text: str) -> dict:
    lower = text.lower()
    # The first rule that fires wins; anything else is a technical problem of medium priority.
    category = next((c for c, words in CATEGORY_WORDS.items() if any(w in lower for w in words)), "technical")
    priority = next((p for p, words in PRIORITY_WORDS.items() if any(w in lower for w in words)), "medium")
    product = next((p for p in PRODUCTS if re.search(rf"\b{p}\b", text)), "unknown")
    return {"category": category, "product": product, "priority": priority}


def main() -> None:
    for line in DATA.read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        sys.stdout.write(json.dumps({"id": sample["id"], "output": json.dumps(triage(sample["prompt"]))}) + "\n")


if __name__ == "__main__":
    main()
