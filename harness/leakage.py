"""Leakage: does evaluation data appear in the training data? Three methods, one pass.

Texts are normalised (Unicode NFKC, lower case, split at whitespace, punctuation trimmed from each
word) and every word becomes a stable 64-bit hash, so the methods work on integer arrays:

- exact: the hash of a document's whole normalised word sequence;
- ngram: word n-grams in the manner of GPT-3's contamination study (Brown et al. 2020, appendix C):
  n is the 5th percentile of the evaluation documents' lengths in words, bounded to [8, 13]; an
  evaluation document is flagged when it shares an n-gram with a training document; the score is
  the fraction of its n-grams found in that training document;
- near_dup: Jaccard similarity of the two documents' sets of word 3-shingles, flagged at or above a
  threshold. It is computed exactly, by a sort-merge join of shingle hashes, rather than estimated
  with MinHash: exact is never wrong, and benchmarks/bench_leakage.py measures it faster than
  datasketch's MinHashLSH on 1M × 100k documents.

Boilerplate is ignored by both overlap methods: an n-gram or shingle that occurs in more than
`max_doc_freq` training documents, or in more than `max_doc_freq` evaluation documents, is shared
text (a template, an instruction every prompt repeats), not a leak. GPT-3 ignored 13-grams found
in more than 10 training documents; counting evaluation documents too is what keeps two samples
that only share a template from looking like near duplicates, when the training set is too small
for a template to pass the training threshold. A document with fewer words than n has no n-grams;
the exact method still covers it.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

Method = Literal["exact", "ngram", "near_dup"]
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial hash of a word sequence stays invertible per step
CHUNK = 100_000  # documents tokenised per task (two threads: Arrow's string kernels release the GIL)
# Punctuation trimmed from the ends of words (ASCII, and the common typographic marks NFKC keeps).
PUNCTUATION = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum() and chr(c) != "_") + "‘’‚“”„–—…«»"
SENTINEL = "."  # follows the last string handed to Arrow's whitespace split (see _words)


@dataclass(frozen=True)
class Settings:
    ngram_max: int = 13
    ngram_min: int = 8
    shingle: int = 3
    near_dup: float = 0.5  # Jaccard similarity at or above which a pair is a near duplicate
    max_doc_freq: int = 10
    top_k: int = 5  # matches kept per evaluation document and method, best first


@dataclass(frozen=True)
class Match:
    eval_index: int
    train_index: int
    method: Method
    score: float  # exact: 1; ngram: fraction of the eval document's n-grams in the training document; near_dup: Jaccard


@dataclass(frozen=True)
class Tokens:
    """Documents as one flat array of word hashes: document i is values[offsets[i]:offsets[i+1]]."""

    values: np.ndarray  # uint64
    offsets: np.ndarray  # int64, one more than there are documents

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc_of_position(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), self.lengths)


# ---------------------------------------------------------------------------------------------
# Normalisation and hashing


def normalise(text: str) -> list[str]:
    """The words a text is compared by: the definition, which `tokenize` follows for many texts at once."""
    words = (w.strip(PUNCTUATION) for w in unicodedata.normalize("NFKC", text).lower().split())
    return [w for w in words if w]


def tokenize(texts: Sequence[str], threads: int = 2) -> Tokens:
    """Normalise and hash every word of every text, chunk by chunk on `threads` threads."""
    cache: dict[str, int] = {}
    chunks = [texts[i:i + CHUNK] for i in range(0, len(texts), CHUNK)] or [[]]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        parts = list(pool.map(lambda c: _tokenize_chunk(c, cache), chunks))
    values = np.concatenate([v for v, _ in parts]) if parts else np.zeros(0, np.uint64)
    lengths = np.concatenate([n for _, n in parts])
    return Tokens(values, np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]))


def _tokenize_chunk(texts: Sequence[str], cache: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc

    # NFKC and lower case of non-ASCII text come from Python, the definition `normalise` uses:
    # Arrow's utf8proc follows a newer Unicode version than Python's unicodedata, and it lowers
    # case one code point at a time ("İ" → "i", not "i̇"; a word-final "Σ" → "σ", not "ς").
    # For ASCII text both are plain ASCII lower case, which Arrow does without the GIL.
    prepared = [t if t.isascii() else unicodedata.normalize("NFKC", t).lower() for t in texts]
    words, parents = _words(pc.ascii_lower(pa.array(prepared, pa.string())))
    encoded = pc.dictionary_encode(words)
    table = np.fromiter((_word_hash(w, cache) for w in encoded.dictionary.to_pylist()), np.uint64,
                        count=len(encoded.dictionary))
    values = table[encoded.indices.to_numpy(zero_copy_only=False)]
    lengths = np.bincount(parents.to_numpy(zero_copy_only=False), minlength=len(texts)).astype(np.int64)
    return values, lengths


def _words(arr):
    """The words of every string in an Arrow string array (split at whitespace, punctuation trimmed,
    empty ones dropped), and for each word the index of its string."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrow's utf8_split_whitespace (pyarrow 26.0.1) decodes one code point past the end of a
    # string whose whitespace run reaches that end, and gives up on the separator when those bytes
    # are not valid UTF-8. After the last string they are whatever memory follows the buffer, so
    # a trailing space stayed glued to the last word now and then. A sentinel string ("." has no
    # whitespace) after the last one makes those bytes valid; its list is sliced off.
    lists = pc.utf8_split_whitespace(pa.concat_arrays([arr, pa.array([SENTINEL], arr.type)])).slice(0, len(arr))
    words = pc.utf8_trim(pc.list_flatten(lists), PUNCTUATION)
    parents = pc.list_parent_indices(lists)
    keep = pc.not_equal(words, "")
    return pc.filter(words, keep), pc.filter(parents, keep)


def _word_hash(word: str, cache: dict[str, int]) -> int:
    """A stable 64-bit hash (blake2b), the same in every process: Python's str hash is salted."""
    h = cache.get(word)
    if h is None:
        h = cache[word] = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return h


def doc_hashes(tokens: Tokens) -> np.ndarray:
    """One hash per document's whole word sequence (0 for a document without words)."""
    lengths = tokens.lengths
    if not len(tokens.values):
        return np.zeros(len(lengths), np.uint64)
    pos = np.arange(len(tokens.values), dtype=np.int64) - np.repeat(tokens.offsets[:-1], lengths)
    powers = np.cumprod(np.full(int(lengths.max()), MULTIPLIER, np.uint64)) if len(lengths) else np.zeros(0, np.uint64)
    terms = tokens.values * powers[pos]
    out = np.zeros(len(lengths), np.uint64)
    nonempty = lengths > 0
    out[nonempty] = np.add.reduceat(terms, tokens.offsets[:-1][nonempty])
    return out


def ngrams(tokens: Tokens, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, document index, position of the first word) of every word n-gram, in document order."""
    v, total = tokens.values, len(tokens.values)
    if total < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    h = v[: total - n + 1].copy()
    for k in range(1, n):
        h *= MULTIPLIER
        h += v[k: total - n + 1 + k]
    doc = tokens.doc_of_position()[: total - n + 1]
    start = np.flatnonzero(np.arange(total - n + 1) + n <= tokens.offsets[doc + 1])
    return h[start], doc[start], start


# ---------------------------------------------------------------------------------------------
# The join


def _unique_pairs(h: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (hash, document) pairs, sorted by hash."""
    order = np.lexsort((doc, h))
    h, doc = h[order], doc[order]
    keep = np.ones(len(h), bool)
    keep[1:] = (h[1:] != h[:-1]) | (doc[1:] != doc[:-1])
    return h[keep], doc[keep]


def _doc_freq(unique_h: np.ndarray, query: np.ndarray) -> np.ndarray:
    """How many documents hold each `query` hash, from sorted distinct (hash, document) pairs."""
    lo = np.searchsorted(unique_h, query, "left")
    return np.searchsorted(unique_h, query, "right") - lo


def _prefilter(h: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Mask of the `h` that are in `wanted` (sorted): a one-bit-per-slot filter on the top bits
    throws out almost every non-member in one cheap pass, then a binary search confirms the rest."""
    bits = max(16, min(28, int(math.log2(max(1, len(wanted)))) + 5))
    table = np.zeros(1 << bits, bool)
    shift = np.uint64(64 - bits)
    table[wanted >> shift] = True
    maybe = np.flatnonzero(table[h >> shift])
    found = np.searchsorted(wanted, h[maybe])
    found = np.minimum(found, len(wanted) - 1)
    mask = np.zeros(len(h), bool)
    mask[maybe[wanted[found] == h[maybe]]] = True
    return mask


@dataclass
class _Overlap:
    eval_doc: np.ndarray  # pairs of documents sharing at least one non-boilerplate gram
    train_doc: np.ndarray
    shared: np.ndarray  # how many distinct non-boilerplate grams they share
    eval_size: np.ndarray  # per evaluation document: its distinct non-boilerplate grams
    train_size: dict[int, int] | None  # per training document in a pair (when asked for)
    kept: np.ndarray  # the evaluation side's non-boilerplate grams, sorted


def overlap(eval_grams, train_grams, max_doc_freq: int, min_share: float = 0.0, train_sizes: bool = False) -> _Overlap:
    """Shared distinct grams per (evaluation, training) document pair, boilerplate excluded; only
    pairs sharing at least `min_share` of the evaluation document's grams are kept.

    `*_grams` are (hashes, document index) as `ngrams` returns them."""
    (eh, ed, _), (th, td, _) = eval_grams, train_grams
    n_eval = int(ed.max()) + 1 if len(ed) else 0
    e_pairs = _unique_pairs(eh, ed)
    eh, ed = e_pairs
    # Boilerplate among the evaluation documents first: what is left is all the training side
    # has to be searched for, and common grams (the costly ones to count) are gone.
    keep = _doc_freq(eh, eh) <= max_doc_freq
    eh, ed = eh[keep], ed[keep]
    mask = _prefilter(th, np.unique(eh)) if len(eh) else np.zeros(len(th), bool)
    sh, sd = _unique_pairs(th[mask], td[mask])
    keep = _doc_freq(sh, eh) <= max_doc_freq
    eh, ed = eh[keep], ed[keep]
    eval_size = np.bincount(ed, minlength=n_eval)
    # Pairs: every kept eval (hash, doc) with every training document holding that hash.
    lo = np.searchsorted(sh, eh, "left")
    counts = np.searchsorted(sh, eh, "right") - lo
    rep = np.repeat(np.arange(len(eh)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    e_doc, t_doc = ed[rep], sd[lo[rep] + within]
    width = int(td.max()) + 1 if len(td) else 1
    key, shared = np.unique(e_doc.astype(np.int64) * width + t_doc, return_counts=True)
    e_doc, t_doc = key // width, key % width
    enough = shared >= min_share * eval_size[e_doc]
    e_doc, t_doc, shared = e_doc[enough], t_doc[enough], shared[enough]
    sizes = _train_sizes(np.unique(t_doc), th, td, e_pairs, max_doc_freq) if train_sizes else None
    return _Overlap(e_doc, t_doc, shared, eval_size, sizes, np.unique(eh))


def _train_sizes(docs: np.ndarray, th: np.ndarray, td: np.ndarray, eval_pairs, max_doc_freq: int) -> dict[int, int]:
    """Distinct non-boilerplate grams of each training document in `docs` (the Jaccard denominator
    needs them): their document frequencies are counted over the whole training set."""
    if not len(docs):
        return {}
    starts, ends = np.searchsorted(td, docs, "left"), np.searchsorted(td, docs, "right")
    idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
    ch, cd = _unique_pairs(th[idx], td[idx])
    keys = np.unique(ch)
    fh, _ = _unique_pairs(*(a[_prefilter(th, keys)] for a in (th, td)))
    train_df = _doc_freq(fh, ch)
    eval_df = _doc_freq(eval_pairs[0], ch)
    ok = (train_df <= max_doc_freq) & (eval_df <= max_doc_freq)
    counted = np.bincount(np.searchsorted(docs, cd[ok]), minlength=len(docs))
    return dict(zip(docs.tolist(), counted.tolist()))


# ---------------------------------------------------------------------------------------------
# The three methods


def ngram_size(eval_tokens: Tokens, settings: Settings) -> int:
    """GPT-3's choice: the 5th percentile of the evaluation documents' lengths, within [min, max]."""
    lengths = eval_tokens.lengths[eval_tokens.lengths > 0]
    if not len(lengths):
        return settings.ngram_max
    return int(min(settings.ngram_max, max(settings.ngram_min, np.percentile(lengths, 5))))


def find_leaks(train: Sequence[str], evals: Sequence[str], settings: Settings = Settings(),
               threads: int = 2, train_tokens: Tokens | None = None) -> list[Match]:
    """Every evaluation text that leaked into the training texts, by each method, best matches first
    (at most `top_k` training documents per evaluation text and method)."""
    tt = train_tokens if train_tokens is not None else tokenize(train, threads)
    et = tokenize(evals, threads)
    matches = _exact(et, tt, settings.top_k)
    k = settings.shingle
    e_sh = ngrams(et, k)
    # Jaccard ≥ t needs at least t of the evaluation document's shingles shared: pairs below that
    # are dropped before the training documents' own shingle counts are looked up.
    ov = overlap(e_sh, ngrams(tt, k), settings.max_doc_freq, min_share=settings.near_dup, train_sizes=True)
    if len(ov.eval_doc):
        b = np.array([ov.train_size[t] for t in ov.train_doc.tolist()])
        jaccard = ov.shared / (ov.eval_size[ov.eval_doc] + b - ov.shared)
        near = jaccard >= settings.near_dup
        matches += _best(ov.eval_doc[near], ov.train_doc[near], jaccard[near], "near_dup", settings.top_k)
    # An n-gram is evidence only if most of the shingles inside it are not boilerplate: in templated
    # data, template words around one shared slot value (a date, a product) make an n-gram as rare
    # as that value, with little of the sample's own text in it.
    rare = np.zeros(len(et.values) + 1, np.int64)
    rare[e_sh[2][np.isin(e_sh[0], ov.kept)]] = 1
    rare = np.concatenate([[0], np.cumsum(rare)])
    n = ngram_size(et, settings)
    h, d, start = ngrams(et, n)
    informative = 2 * (rare[start + n - k + 1] - rare[start]) > n - k + 1
    ov = overlap((h[informative], d[informative], start[informative]), ngrams(tt, n), settings.max_doc_freq)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = ov.shared / ov.eval_size[ov.eval_doc]
    matches += _best(ov.eval_doc, ov.train_doc, frac, "ngram", settings.top_k)
    return matches


def _exact(et: Tokens, tt: Tokens, top_k: int) -> list[Match]:
    eh, th = doc_hashes(et), doc_hashes(tt)
    order = np.argsort(th, kind="stable")
    sorted_h = th[order]
    lo, hi = np.searchsorted(sorted_h, eh, "left"), np.searchsorted(sorted_h, eh, "right")
    out = []
    for e in np.flatnonzero((hi > lo) & (et.lengths > 0)).tolist():
        out += [Match(e, int(t), "exact", 1.0) for t in order[lo[e]: min(hi[e], lo[e] + top_k)].tolist()]
    return out


def _best(e_doc: np.ndarray, t_doc: np.ndarray, score: np.ndarray, method: Method, top_k: int) -> list[Match]:
    order = np.lexsort((t_doc, -score, e_doc))
    e_doc, t_doc, score = e_doc[order], t_doc[order], score[order]
    first = np.searchsorted(e_doc, e_doc, "left")
    keep = np.arange(len(e_doc)) - first < top_k
    return [Match(int(e), int(t), method, float(s)) for e, t, s in zip(e_doc[keep], t_doc[keep], score[keep])]


# ---------------------------------------------------------------------------------------------
# An experiment's data: every training set against every evaluation set, and the training sets' audit


@dataclass(frozen=True)
class DataSide:
    """One data set as the check reads it: (id, text) items per field. `prompt`: what the model is
    asked; `text`: prompt and answer together (preference data gives one per answer, chosen and
    rejected). A perplexity corpus has only `text` items."""

    name: str  # a training source (train, preference, replay, variant:NAME) or an eval suite
    prompt: list[tuple[str, str]]
    text: list[tuple[str, str]]


def examples_side(name: str, examples) -> DataSide:
    """A DataSide from harness.data Examples (training or evaluation data)."""
    prompts, texts = [], []
    for ex in examples:
        p = ex.prompt_text()
        prompts.append((ex.id, p))
        answers = [m[-1]["content"] for m in (ex.completion, ex.chosen, ex.rejected) if m]
        texts += [(ex.id, f"{p}\n{a}") for a in answers]
    return DataSide(name, prompts, texts)


def check_data(train: Sequence[DataSide], evals: Sequence[DataSide], settings: Settings = Settings()) -> list[dict]:
    """One row per flagged (evaluation sample, training sample, field, method): the leakage table."""
    rows = []
    for field in ("prompt", "text"):
        for t in train:
            items = getattr(t, field)
            if not items:
                continue
            tokens = tokenize([x for _, x in items])
            for e in evals:
                targets = getattr(e, field)
                if not targets:
                    continue
                for m in find_leaks([], [x for _, x in targets], settings, train_tokens=tokens):
                    rows.append({"suite": e.name, "sample_id": targets[m.eval_index][0], "field": field,
                                 "method": m.method, "source": t.name, "train_id": items[m.train_index][0],
                                 "score": m.score, "eval_text": targets[m.eval_index][1],
                                 "train_text": items[m.train_index][1]})
    return rows


def flagged_by_method(rows: list[dict], suite: str) -> dict[str, int]:
    """How many samples of a suite each method flagged (any field or training source), and in all."""
    mine = [r for r in rows if r["suite"] == suite]
    counts = {m: len({r["sample_id"] for r in mine if r["method"] == m}) for m in ("exact", "ngram", "near_dup")}
    return {**counts, "any": len({r["sample_id"] for r in mine})}


def worst(rows: list[dict], k: int | None = 5) -> list[dict]:
    """The k strongest findings, one per evaluation sample: exact first, then by score."""
    rank = {"exact": 0, "near_dup": 1, "ngram": 2}
    best: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: (rank[r["method"]], -r["score"])):
        best.setdefault((r["suite"], r["sample_id"]), r)
    return list(best.values())[:k]


def audit(side: DataSide, fields: dict[str, list], token_counts: list[tuple[int, int]] | None,
          max_lengths: dict[int, list[str]], settings: Settings = Settings()) -> list[dict]:
    """Rows (check, value, detail) describing one training set: size, duplicates, conflicting
    answers, near duplicates within it, lengths, empty answers, examples longer than a variant's
    max_length (TRL truncates them; an answer past the limit is lost), and label balance.

    `token_counts`: (prompt tokens, prompt + answer tokens) per text item, as the chat template
    renders them; `max_lengths`: training max_length → the variants that train with it."""
    import json

    rows = [{"check": "examples", "value": len(side.prompt), "detail": None}]
    norm = [" ".join(normalise(x)) for _, x in side.text]
    first: dict[str, str] = {}
    dups = [(i, first.setdefault(n, i)) for (i, _), n in zip(side.text, norm) if first.get(n, i) != i]
    rows.append({"check": "duplicates", "value": len(dups), "detail": json.dumps(dups[:10])})
    # One prompt, different answers (preference data: the chosen ones; rejected ones differ by design).
    answer = {}
    for (i, _), n in zip(side.text, norm):
        answer.setdefault(i, n)
    answers_by_prompt: dict[str, set] = {}
    for i, p in side.prompt:
        answers_by_prompt.setdefault(" ".join(normalise(p)), set()).add(answer.get(i))
    conflicts = [p[:80] for p, a in answers_by_prompt.items() if len(a) > 1]
    rows.append({"check": "conflicting_answers", "value": len(conflicts), "detail": json.dumps(conflicts[:10])})
    texts = [x for _, x in side.text]
    near = {(side.text[m.eval_index][0], side.text[m.train_index][0]) for m in find_leaks(texts, texts, settings)
            if m.method == "near_dup" and side.text[m.eval_index][0] != side.text[m.train_index][0]}
    pairs = sorted({tuple(sorted(p)) for p in near})
    rows.append({"check": "near_duplicates", "value": len(pairs), "detail": json.dumps(pairs[:10])})
    answers = [t[len(p) + 1:] for (_, t), p in zip(side.text, _prompt_per_text(side))]
    rows.append({"check": "empty_answers", "value": sum(not a.strip() for a in answers),
                 "detail": json.dumps([i for (i, _), a in zip(side.text, answers) if not a.strip()][:10])})
    for name, values in (("prompt_words", [len(normalise(p)) for _, p in side.prompt]),
                         ("answer_words", [len(normalise(a)) for a in answers])):
        rows.append({"check": name, "value": float(np.median(values)), "detail": json.dumps(_spread(values))})
    if token_counts:
        rows.append({"check": "tokens", "value": float(np.median([t for _, t in token_counts])),
                     "detail": json.dumps(_spread([t for _, t in token_counts]))})
        for limit, variants in sorted(max_lengths.items()):
            cut = sum(t > limit for _, t in token_counts)
            lost = sum(p >= limit for p, _ in token_counts)
            rows.append({"check": f"over_max_length:{limit}", "value": cut,
                         "detail": json.dumps({"variants": variants, "answer_lost": lost, "of": len(token_counts)})})
    for field, values in fields.items():
        counts: dict[str, int] = {}
        for v in values:
            counts[str(v)] = counts.get(str(v), 0) + 1
        if 2 <= len(counts) <= 20:
            rows.append({"check": f"balance:{field}", "value": max(counts.values()) / min(counts.values()),
                         "detail": json.dumps(dict(sorted(counts.items(), key=lambda kv: -kv[1])))})
    return rows


def _prompt_per_text(side: DataSide) -> list[str]:
    by_id = dict(side.prompt)
    return [by_id[i] for i, _ in side.text]


def _spread(values: list[int]) -> dict:
    if not values:
        return {}
    p = np.percentile(values, [0, 5, 50, 95, 100])
    return {"min": int(p[0]), "p5": float(p[1]), "median": float(p[2]), "p95": float(p[3]), "max": int(p[4])}
