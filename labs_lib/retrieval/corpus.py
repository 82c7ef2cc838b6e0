"""A real text corpus with known answers, offline: the Python docs that ship with Python.

`pydoc_data.topics` (standard library, 79 topics, about 65k words) is what `help("assert")`
prints. It is real technical prose with code, it needs no download, and every Python has it.

Rules, stated so that a lab can print them (`Corpus.rule`):

- Text: each topic's words (maximal runs of non-whitespace) joined by single spaces; the topic's
  heading is its first non-empty line. Chunks never cross topics.
- Queries (chosen before chunking): a sentence is a run of words ending at a word that ends in
  ".", "?" or "!". A candidate is not a topic's first sentence (that holds the heading, and a
  topic never loses all its text), has `min_words`..`max_words` words, starts with a capital
  letter and occurs exactly once in the whole corpus. `n_queries` candidates are drawn with
  `numpy.random.default_rng(seed)`; each is removed from its topic, so the indexed text does
  not contain it. Its answers are the chunks that cover the gap it left (the token just before
  and the token just after it): with overlap > 0, one or two chunks.
- Chunks: the remaining text of a topic is tokenized (words, or a given Hugging Face fast
  tokenizer without special tokens), cut into windows of `chunk_tokens` tokens starting every
  `chunk_tokens - overlap` tokens; the last window of a topic ends at its last token (it may be
  shorter). A chunk's text is the exact slice of the topic's text its tokens cover.

>>> c = build_corpus(chunk_tokens=64, overlap=16, n_queries=5, seed=0)
>>> len(c.queries), all(len(c.chunks[i].text.split()) <= 64 for i in range(len(c.chunks)))
(5, True)
>>> q = c.queries[0]
>>> any(q.text in c.chunks[a].text for a in q.answers)
False
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import params

_END = (".", "?", "!")


@dataclass(frozen=True)
class Chunk:
    """One indexed passage: `text` covers tokens [start, end) of its topic's remaining text."""

    id: int
    topic: str
    heading: str
    text: str
    start: int
    end: int

    @property
    def n_tokens(self) -> int:
        return self.end - self.start

    @property
    def text_with_heading(self) -> str:
        """What to embed when the heading should give the chunk its context."""
        return f"{self.heading}\n{self.text}"


@dataclass(frozen=True)
class Query:
    """A held-out sentence; `answers` are the ids of the chunks that cover where it was."""

    id: int
    text: str
    topic: str
    answers: tuple[int, ...]


@dataclass
class Corpus:
    chunks: list[Chunk]
    queries: list[Query]
    rule: str
    params: dict[str, Any] = field(default_factory=dict)

    def texts(self, with_heading: bool = False) -> list[str]:
        """The chunk texts in id order (what gets embedded and indexed)."""
        return [c.text_with_heading if with_heading else c.text for c in self.chunks]

    def relevant(self) -> list[set[int]]:
        """Per query, its answer chunk ids (the `relevant` argument of the metrics)."""
        return [set(q.answers) for q in self.queries]


def load_topics() -> dict[str, str]:
    """The Python docs shipped with Python: {topic: text}, sorted by topic.

    >>> t = load_topics()
    >>> len(t) > 50, t["assert"].splitlines()[0]
    (True, 'The "assert" statement')
    """
    from pydoc_data.topics import topics

    return {k: topics[k] for k in sorted(topics)}


def heading_of(text: str, default: str = "") -> str:
    """The first non-empty line of a text (a topic's heading), stripped.

    >>> heading_of("\\n  Title  \\n*****\\nbody")
    'Title'
    """
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return default


def sentences(words: list[str]) -> list[tuple[int, int]]:
    """Sentence spans [a, b) over a word list: a sentence ends at a word ending in . ? or !

    >>> sentences("One two. Three four five? Six".split())
    [(0, 2), (2, 5), (5, 6)]
    """
    spans, a = [], 0
    for i, w in enumerate(words):
        if w.endswith(_END):
            spans.append((a, i + 1))
            a = i + 1
    if a < len(words):
        spans.append((a, len(words)))
    return spans


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of `text` (the word tokenizer).

    >>> word_spans("ab  c")
    [(0, 2), (4, 5)]
    """
    return [m.span() for m in re.finditer(r"\S+", text)]


def token_spans(text: str, tokenizer: Any = None) -> list[tuple[int, int]]:
    """Character spans of the tokens of `text`: words when `tokenizer` is None, else the
    offsets of a Hugging Face fast tokenizer (no special tokens; empty spans dropped)."""
    if tokenizer is None:
        return word_spans(text)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenizer must be a Hugging Face *fast* tokenizer (it needs offsets), "
                         f"got {type(tokenizer).__name__}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                    verbose=False)
    return [(int(s), int(e)) for s, e in enc["offset_mapping"] if e > s]


def window_starts(n_tokens: int, chunk_tokens: int, overlap: int) -> list[int]:
    """Start of each window: every `chunk_tokens - overlap` tokens, until one reaches the end.

    >>> window_starts(10, 4, 1)  # windows [0,4) [3,7) [6,10)
    [0, 3, 6]
    >>> window_starts(3, 4, 1)
    [0]
    """
    params.positive_int("chunk_tokens", chunk_tokens)
    params.int_in_range("overlap", overlap, 0, chunk_tokens - 1)
    if n_tokens <= 0:
        return []
    stride = chunk_tokens - overlap
    starts = [0]
    while starts[-1] + chunk_tokens < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


def build_corpus(
    *,
    chunk_tokens: int = 128,
    overlap: int = 32,
    n_queries: int = 200,
    seed: int = 0,
    tokenizer: Any = None,
    min_words: int = 8,
    max_words: int = 40,
    topics: dict[str, str] | None = None,
) -> Corpus:
    """Chunks of the Python docs and queries with known answers, by the module's stated rules.

    `tokenizer`: None (words) or a Hugging Face fast tokenizer (e.g. the embedding model's, so
    that `chunk_tokens` is what the model sees). `topics` replaces the Python docs (tests).
    Deterministic for a given seed and inputs.
    """
    params.positive_int("chunk_tokens", chunk_tokens)
    params.int_in_range("overlap", overlap, 0, chunk_tokens - 1)
    params.non_negative_int("n_queries", n_queries)
    params.positive_int("min_words", min_words)
    params.int_in_range("max_words", max_words, min_words)
    topics = load_topics() if topics is None else dict(topics)
    if not topics:
        raise ValueError("topics must not be empty")
    words = {k: re.findall(r"\S+", v) for k, v in topics.items()}
    everything = "\n".join(" ".join(w) for w in words.values())

    # 1. candidate sentences, then a seeded draw of the held-out ones
    cands: list[tuple[str, int, int]] = []
    for k, w in words.items():
        for a, b in sentences(w):
            s = " ".join(w[a:b])
            if (a > 0 and min_words <= b - a <= max_words and w[a][:1].isupper()
                    and s.endswith(_END)
                    and everything.count(s) == 1):
                cands.append((k, a, b))
    if n_queries > len(cands):
        raise ValueError(f"n_queries={n_queries} but only {len(cands)} sentences qualify "
                         f"(min_words={min_words}, max_words={max_words})")
    rng = np.random.default_rng(seed)
    picked = sorted((cands[i] for i in rng.choice(len(cands), n_queries, replace=False)),
                    key=lambda c: (list(words).index(c[0]), c[1]))

    # 2. remove them; remember where each one was (the gap, in words of the remaining text)
    held: dict[str, list[tuple[int, str]]] = {k: [] for k in words}
    remaining: dict[str, list[str]] = {}
    for k, w in words.items():
        spans = [(a, b) for t, a, b in picked if t == k]
        removed = 0
        for a, b in spans:
            held[k].append((a - removed, " ".join(w[a:b])))
            removed += b - a
        cut = np.ones(len(w), dtype=bool)
        for a, b in spans:
            cut[a:b] = False
        keep = [x for x, c in zip(w, cut, strict=True) if c]
        remaining[k] = keep

    # 3. chunk each topic; answers are the chunks covering the tokens on each side of a gap
    chunks: list[Chunk] = []
    queries: list[tuple[int, Query]] = []
    for k, w in remaining.items():
        text = " ".join(w)
        head = heading_of(topics[k], k)
        spans = token_spans(text, tokenizer)
        first = len(chunks)
        for s in window_starts(len(spans), chunk_tokens, overlap):
            e = min(s + chunk_tokens, len(spans))
            chunks.append(Chunk(len(chunks), k, head, text[spans[s][0]:spans[e - 1][1]], s, e))
        starts = np.array([sp[0] for sp in spans])
        for gap_word, sentence in held[k]:
            gap_char = len(" ".join(w[:gap_word]))
            t = int(np.searchsorted(starts, gap_char))  # tokens before the gap
            side = {max(t - 1, 0), min(t, len(spans) - 1)}
            answers = tuple(c.id for c in chunks[first:]
                            if any(c.start <= i < c.end for i in side))
            order = next(i for i, p in enumerate(picked) if p[0] == k
                         and " ".join(words[k][p[1]:p[2]]) == sentence)
            queries.append((order, Query(0, sentence, k, answers)))
    queries.sort(key=lambda x: x[0])
    out_q = [Query(i, q.text, q.topic, q.answers) for i, (_, q) in enumerate(queries)]
    order = rng.permutation(len(out_q))  # queries in a seeded random order, not by topic
    out_q = [Query(i, out_q[j].text, out_q[j].topic, out_q[j].answers)
             for i, j in enumerate(order)]
    unit = "words" if tokenizer is None else f"tokens of {getattr(tokenizer, 'name_or_path', '?')}"
    rule = (f"{len(topics)} topics -> {len(chunks)} chunks of {chunk_tokens} {unit} "
            f"(overlap {overlap}, within a topic); {len(out_q)} queries = sentences of "
            f"{min_words}-{max_words} words held out of the text (seed {seed}), answer = the "
            "chunk(s) covering the gap")
    return Corpus(chunks, out_q, rule, dict(chunk_tokens=chunk_tokens, overlap=overlap,
                                             n_queries=n_queries, seed=seed,
                                             min_words=min_words, max_words=max_words))
