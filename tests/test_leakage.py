"""Leakage methods: planted leaks are found, samples that only share a template are not, and the
overlap scores equal a plain set-based computation of the same definitions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.leakage import (Settings, _word_hash, _words, doc_hashes, find_leaks, ngram_size, ngrams, normalise,
                             tokenize)

INSTRUCTION = ("Triage this support ticket: answer with one JSON object that holds its category, the product it "
               "names and its priority, and nothing else. ")
TEMPLATES = [INSTRUCTION + t for t in [
    "Hello team, since {date} the {product} app crashes whenever I {action}, "
    "which makes my work as a {job} in {city} impossible. Order {order}. Regards, {name}",
    "Hi, I was charged {amount} dollars twice for {product} on {date}. Please "
    "refund one payment to my card ending {order}; I am a {job} from {city}. Thanks, {name}",
    "Good morning, could {product} let me {action} from the settings page? "
    "Our {job} team in {city} has asked for it since {date}. Best, {name} (order {order})",
]]
FILLERS = {
    "product": ["PayFlow", "ChatDesk", "DataVault", "MailPilot", "CloudSync", "TaskBoard", "ShipFast", "NoteHub"],
    "action": ["export a report", "upload a photo", "reset my password", "invite a colleague", "print an invoice",
               "change the language", "archive old tickets", "merge two accounts", "sync my calendar"],
    "job": ["nurse", "teacher", "pilot", "baker", "lawyer", "plumber", "designer", "chemist", "farmer", "editor"],
    "city": ["Lisbon", "Osaka", "Lagos", "Quito", "Oslo", "Perth", "Tunis", "Hanoi", "Leeds", "Austin", "Cusco"],
    "name": ["Mei", "Jules", "Omar", "Nora", "Kemi", "Chen", "Ana", "Ravi", "Ida", "Tom", "Lea", "Sam"],
}


def template_samples(n: int, seed: int, half: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from the templates, every slot filled at random from one half of each
    filler list (0 or 1): samples from different halves share their template and nothing else."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.randrange(len(TEMPLATES))
        slots = {k: rng.choice(v[half::2]) for k, v in FILLERS.items()}
        slots.update(order=str(rng.randrange(10**6)), amount=str(rng.randrange(10, 500)),
                     date=f"{rng.choice(['March', 'May', 'July', 'October'])} {rng.randrange(1, 29)}")
        answer = f'{{"category": "{["technical", "billing", "feature_request"][t]}", "product": "{slots["product"]}"}}'
        out.append((TEMPLATES[t].format(**slots), answer))
    return out


@pytest.fixture(scope="module")
def templated():
    return template_samples(300, seed=1, half=0), template_samples(100, seed=2, half=1)


def flagged(matches, method=None) -> set[tuple[int, int]]:
    return {(m.eval_index, m.train_index) for m in matches if method is None or m.method == method}


# -- normalisation ---------------------------------------------------------------------------


def test_normalisation_ignores_case_whitespace_punctuation_and_unicode_form():
    a = "Hello,   WORLD! Café — “quoted” text…"
    b = "hello world cafe\u0301 quoted text"  # decomposed é: NFKC composes it
    c = "ｈｅｌｌｏ world café quoted TEXT"  # full-width letters: NFKC folds them
    assert normalise(a) == normalise(b) == normalise(c) == ["hello", "world", "café", "quoted", "text"]
    h = doc_hashes(tokenize([a, b, c, "hello world café quoted", ""]))
    assert h[0] == h[1] == h[2] != h[3]
    assert h[4] == 0  # a text without words has nothing to match


def test_tokenize_agrees_with_normalise_across_chunks(monkeypatch):
    import harness.leakage as L

    monkeypatch.setattr(L, "CHUNK", 3)  # several chunks on two threads: one hash per word everywhere
    texts = [f"Doc {i}: the {i % 4} CAT sat." for i in range(10)] + ["", "  ...  "]
    tokens = tokenize(texts)
    assert tokens.lengths.tolist() == [len(normalise(t)) for t in texts]
    words = [w for t in texts for w in normalise(t)]
    by_word: dict = {}
    for w, h in zip(words, tokens.values.tolist()):
        assert by_word.setdefault(w, h) == h
    assert len(set(by_word.values())) == len(by_word)


def _per_text(tokens) -> list[list[int]]:
    return [tokens.values[a:b].tolist() for a, b in zip(tokens.offsets[:-1], tokens.offsets[1:])]


def _reference_hashes(texts: list[str]) -> list[list[int]]:
    return [[_word_hash(w, {}) for w in normalise(t)] for t in texts]


@pytest.mark.parametrize("texts", [
    ["İstanbul"],  # Python lowers İ to i + combining dot above; Arrow's utf8_lower to a plain i
    ["ΟΔΟΣ ΑΣ.", "ϹΑϹ"],  # a word-final capital sigma (or lunate sigma, NFKC → Σ) lowers to ς in Python
    ["\U0001e030 \ua7cb", "\u1c89x"],  # assigned after Python's Unicode version; Arrow's utf8proc knows them
])
def test_tokenize_follows_pythons_unicode_rules(texts):
    assert _per_text(tokenize(texts)) == _reference_hashes(texts)


def test_whitespace_that_ends_the_last_string_splits_whatever_bytes_follow_it():
    """Arrow's utf8_split_whitespace reads one code point past a whitespace run that ends a string;
    after the last string those bytes are whatever memory follows, and where they are not valid
    UTF-8 it kept the run in the word. Here they are a stray continuation byte, as stale memory
    left them when the fuzz found this (texts such as ['tü', '¢\\x94ä '])."""
    import pyarrow as pa

    data = "x y\u3000".encode() + b"\x80\xa9"  # the string is the first 6 bytes
    arr = pa.Array.from_buffers(pa.string(), 1, [None, pa.array([0, 6], pa.int32()).buffers()[1], pa.py_buffer(data)])
    words, parents = _words(arr)
    assert (words.to_pylist(), parents.to_pylist()) == (["x", "y"], [0, 0])
    sliced = pa.array(["a b ", "\u00e9c"]).slice(0, 1)  # a slice: its strings start past offset 0
    assert _words(sliced)[0].to_pylist() == ["a", "b"]


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(st.lists(st.text(max_size=60), max_size=5))
def test_tokenize_equals_normalise_for_any_text(texts):
    assert _per_text(tokenize(texts)) == _reference_hashes(texts)


def test_ngrams_stay_inside_documents_and_equal_text_gives_equal_hashes():
    tokens = tokenize(["a b c d e", "x y", "c d e f"])
    h, doc, start = ngrams(tokens, 3)
    assert doc.tolist() == [0, 0, 0, 2, 2]  # "x y" is shorter than 3; none spans two documents
    assert start.tolist() == [0, 1, 2, 7, 8]
    assert h[2] == h[3]  # "c d e" in both
    assert len(set(h.tolist())) == 4


def test_ngram_size_follows_gpt3_fifth_percentile_within_bounds():
    s = Settings()
    assert ngram_size(tokenize(["w " * 50] * 20), s) == 13  # long documents: capped at 13
    assert ngram_size(tokenize(["w " * 10] * 20), s) == 10
    assert ngram_size(tokenize(["w " * 3] * 20), s) == 8  # short ones: not below 8
    lengths = [9] + [12] * 19  # 5th percentile of these lengths, interpolated as numpy does
    assert ngram_size(tokenize(["w " * n for n in lengths]), s) == int(np.percentile(lengths, 5))


# -- planted leaks and templates -------------------------------------------------------------


def test_template_only_pairs_are_not_flagged(templated):
    train, evals = templated
    for field in (0, 1):  # prompt alone, then prompt + answer
        tr = [p if field == 0 else f"{p}\n{a}" for p, a in train]
        ev = [p if field == 0 else f"{p}\n{a}" for p, a in evals]
        assert find_leaks(tr, ev) == []
    # The test has teeth: without the boilerplate rule the shared instruction is a 13-word overlap
    # in every sample, and the shared template makes pairs far more similar.
    naive = find_leaks([p for p, _ in train], [p for p, _ in evals], Settings(max_doc_freq=10**9, near_dup=0.3))
    assert {m.eval_index for m in naive if m.method == "ngram"} == set(range(len(evals)))
    assert len({m.eval_index for m in naive if m.method == "near_dup"}) > 10


def _change_words(text: str, k: int, rng: random.Random) -> str:
    words = text.split()
    for i in rng.sample(range(3, len(words)), k):
        words[i] = rng.choice(["banana", "orbit", "velvet", "quartz", "maple"])
    return " ".join(words)


def test_planted_copies_among_templated_samples_are_found_and_nothing_else(templated):
    train, evals = templated
    train_prompts = [p for p, _ in train]
    ev = [p for p, _ in evals]
    ev[0] = train_prompts[10].upper().replace(",", " ,  ").replace(".", "!")  # exact, up to form
    first, _, rest = train_prompts[40].partition(", which makes")  # reordered clauses
    ev[3] = f"which makes{rest} {first}"
    m = find_leaks(train_prompts, ev)
    assert (0, 10) in flagged(m, "exact")
    assert (3, 40) in flagged(m, "near_dup")
    assert {e for e, _ in flagged(m)} == {0, 3}  # no template-only sample among the rest


def test_edited_copies_and_passages_of_free_text_are_found():
    rng = random.Random(3)
    vocab = [f"word{i}" for i in range(3000)]
    train = [" ".join(rng.choices(vocab, k=rng.randrange(30, 60))) for _ in range(500)]
    evals = [" ".join(rng.choices(vocab, k=40)) for _ in range(50)]
    for i in range(10):
        evals[i] = _change_words(train[i], 1 + i % 3, rng)  # 1 to 3 words replaced
    for i in range(10, 20):
        words = train[i].split()
        cut = len(words) // 2
        evals[i] = " ".join(words[cut:] + words[:cut])  # the two halves swapped
    for i in range(20, 25):  # a 15-word passage inside a document of its own
        evals[i] = " ".join(evals[i].split()[:20] + train[i].split()[5:20] + evals[i].split()[20:])
    m = find_leaks(train, evals)
    assert {(i, i) for i in range(20)} <= flagged(m, "near_dup")
    assert {(i, i) for i in range(20, 25)} <= flagged(m, "ngram")
    assert {e for e, _ in flagged(m)} == set(range(25))


def test_prompt_only_leak_is_found_on_prompts_though_the_answers_differ(templated):
    train, evals = templated
    evals = list(evals)
    evals[5] = (train[60][0], '{"category": "billing", "product": "Something else"}')
    prompts = find_leaks([p for p, _ in train], [p for p, _ in evals])
    assert (5, 60) in flagged(prompts, "exact")
    full = find_leaks([f"{p}\n{a}" for p, a in train], [f"{p}\n{a}" for p, a in evals])
    assert (5, 60) not in flagged(full, "exact")  # why both are checked: the pair is not an exact copy


def test_top_k_keeps_the_best_matches_first():
    train = ["alpha beta gamma delta epsilon zeta eta theta iota kappa"] * 8
    m = find_leaks(train, ["Alpha beta gamma delta epsilon zeta eta theta iota kappa"], Settings(top_k=3))
    assert [x.train_index for x in m if x.method == "exact"] == [0, 1, 2]


def test_empty_sides():
    assert find_leaks([], ["some text here"]) == []
    assert find_leaks(["some text here"], []) == []
    assert find_leaks(["", "   "], ["", "!!"]) == []


# -- scores against a plain set-based computation --------------------------------------------


def _reference(train: list[str], evals: list[str], s: Settings) -> dict:
    """The definitions, written with Python sets (slow, obvious)."""
    def grams(text, n):
        w = normalise(text)
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    out = {}
    k = s.shingle
    tr_sh, ev_sh = [grams(t, k) for t in train], [grams(t, k) for t in evals]
    train_df = {g: sum(g in x for x in tr_sh) for x in tr_sh + ev_sh for g in x}
    eval_df = {g: sum(g in x for x in ev_sh) for x in tr_sh + ev_sh for g in x}
    rare = {g for g in train_df if train_df[g] <= s.max_doc_freq and eval_df[g] <= s.max_doc_freq}
    for i, a in enumerate(ev_sh):
        for j, b in enumerate(tr_sh):
            a2, b2 = a & rare, b & rare
            if a2 & b2:
                jac = len(a2 & b2) / len(a2 | b2)
                if jac >= s.near_dup:
                    out[(i, j, "near_dup")] = jac
    n = max(s.ngram_min, min(s.ngram_max, int(np.percentile([len(normalise(t)) for t in evals], 5))))
    tr_ng, ev_ng = [grams(t, n) for t in train], [grams(t, n) for t in evals]
    train_df = {g: sum(g in x for x in tr_ng) for x in ev_ng for g in x}
    eval_df = {g: sum(g in x for x in ev_ng) for x in ev_ng for g in x}
    for i, a in enumerate(ev_ng):
        # informative: most of its shingles are not boilerplate
        kept = {g for g in a if train_df[g] <= s.max_doc_freq and eval_df[g] <= s.max_doc_freq
                and 2 * sum(g[j:j + k] in rare for j in range(n - k + 1)) > n - k + 1}
        for j, b in enumerate(tr_ng):
            if kept & b:
                out[(i, j, "ngram")] = len(kept & b) / len(kept)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_a_set_based_reference(seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)]  # small: many shared shingles, some of them boilerplate
    train = [" ".join(rng.choices(vocab, k=rng.randrange(8, 30))) for _ in range(60)]
    evals = [" ".join(rng.choices(vocab, k=rng.randrange(8, 30))) for _ in range(25)]
    for i in range(8):  # and copies with edits, so that some pairs pass the thresholds
        evals[i] = _change_words(train[i], 1 + i % 3, rng) if len(train[i].split()) > 6 else train[i]
    s = Settings(max_doc_freq=4, near_dup=0.3, top_k=100)
    got = {(m.eval_index, m.train_index, m.method): m.score for m in find_leaks(train, evals, s) if m.method != "exact"}
    want = _reference(train, evals, s)
    assert got.keys() == want.keys()
    assert all(got[key] == pytest.approx(want[key]) for key in want)
    assert any(key[2] == "near_dup" for key in want) and any(key[2] == "ngram" for key in want)


def test_cli_prints_one_json_object_per_flagged_pair(tmp_path, capsys):
    import json

    from harness.cli import main

    train = tmp_path / "train.jsonl"
    evals = tmp_path / "eval.jsonl"
    train.write_text("\n".join(json.dumps({"id": f"t{i}", "prompt": p, "completion": "ok"})
                               for i, p in enumerate(["What is the capital of France, please answer briefly?",
                                                      "Name three primary colours used by painters."])) + "\n")
    evals.write_text(json.dumps({"id": "e1", "prompt": "what is the capital of FRANCE please answer briefly"}) + "\n"
                     + json.dumps({"id": "e2", "prompt": "How many legs does a spider have?"}) + "\n")
    assert main(["leakage", "--train", str(train), "--eval", str(evals), "--format", "json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(x["eval_id"], x["train_id"], x["method"], x["score"]) for x in lines} >= {("e1", "t0", "exact", 1.0)}
    assert all(x["eval_id"] == "e1" for x in lines)
    assert main(["leakage", "--train", str(train), "--eval", str(evals)]) == 0
    assert "1 of 2 samples flagged (exact 1" in capsys.readouterr().out
    assert main(["leakage", "--train", str(tmp_path / "missing.jsonl"), "--eval", str(evals)]) == 2
