"""A synthetic text corpus with structure a small byte-level GPT can learn.

Benchmarks compare optimizers by how fast a model's held-out loss falls, so the
corpus must reward learning at every range a 64-128 byte context can see, and
it must be the same bytes everywhere so that a loss measured on one machine is
comparable with a loss measured on another. Hence: no downloads, no ``random``,
no numpy RNG, no floating point; a splitmix64 generator in pure integer Python
drives everything, and the output depends only on ``seed`` (a longer corpus
extends a shorter one: ``generate_corpus(s, n)[:m] == generate_corpus(s, m)``).

What is in it, from short range to long:

* **Words.** A made-up lexicon (nouns, verbs, adjectives, names) built from
  consonant-vowel syllables. Word classes have their own morphology (verbs end
  in ``-ed`` or ``-es``, adjectives in ``-ic``/``-ous``/``-en``/``-y``, names are
  capitalised) and word frequencies follow Zipf's law (weight 1/rank), with
  short words most frequent.
* **Grammar.** Sentences come from templates (subject, verb, object,
  prepositional phrase, coordination, ``because`` clauses), start with a
  capital letter and end with ``.``; paragraphs end with a newline.
* **Documents and topics.** Each document opens with a title line ``= Word =``
  and has a topic (a subset of the lexicon that it draws from most of the time),
  a tense (all its verbs end in ``-ed`` or all in ``-es``) and two characters
  whose names recur throughout. Inferring topic, tense and names from the
  recent context sharpens every prediction.
* **Records.** ``let vaku = 317, mo = 42. the kor ran. mo is 42.``: fresh keys
  bound to random values, then recalled; the whole record fits in 64 bytes, so
  the value can only be predicted by looking the key up in the context.
* **Arithmetic.** ``Then 12+7=19, 8*3=24.``: the result follows from the
  operands (sums and differences below 200, products of numbers up to 12).
* **Counting.** ``Count 6, 9, 12, 15.``: an arithmetic progression whose step
  is given by its first two terms.
* **Brackets and quotes.** ``Tavo kept (mo [ka ti] sul).``: nested ``()`` and
  ``[]`` lists that always match; ``Tavo said, "The kor ran."``: quoted
  speech whose quotes always match.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_CORPUS_BYTES", "DEFAULT_CORPUS_SEED", "corpus_digest", "generate_corpus"]

DEFAULT_CORPUS_SEED = 1234
DEFAULT_CORPUS_BYTES = 1_000_000

RECORD_WINDOW_BYTES = 64
"""A record, from ``let`` to the end of its last recall, never spans more bytes than this."""

_MASK64 = (1 << 64) - 1
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_FINALS = "nrlkst"
_ADJ_SUFFIXES = ("ic", "ous", "en", "y")
_PREPOSITIONS = ("in", "on", "with", "near", "under", "over", "behind")
_CONNECTIVES = ("Then", "So", "And", "Now")
_RESERVED = frozenset(
    {"a", "an", "and", "because", "by", "count", "is", "kept", "let", "said", "so", "the"}
    | {"then", "now", "to", "of"}
    | set(_PREPOSITIONS)
)
_ZIPF_SCALE = 1 << 32


class _SplitMix64:
    """splitmix64 (Steele, Lea and Flood 2014): tiny, fast enough, and exact in Python ints."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def next_u64(self) -> int:
        self.state = z = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """An integer in ``[0, n)`` (multiply-shift; the bias is below 2**-50)."""
        return (self.next_u64() * n) >> 64

    def chance(self, numerator: int, denominator: int) -> bool:
        return self.below(denominator) < numerator

    def pick(self, items: Sequence[str]) -> str:
        return items[self.below(len(items))]

    def zipf(self, items: tuple[str, ...], cumulative: tuple[int, ...]) -> str:
        """An item drawn with weight proportional to 1 / rank."""
        return items[bisect_right(cumulative, self.below(cumulative[-1]))]


def _zipf_cumulative(n: int) -> tuple[int, ...]:
    total = 0
    out = []
    for rank in range(1, n + 1):
        total += _ZIPF_SCALE // rank
        out.append(total)
    return tuple(out)


def _syllables(rng: _SplitMix64, count: int) -> str:
    return "".join(rng.pick(_CONSONANTS) + rng.pick(_VOWELS) for _ in range(count))


def _word_list(
    rng: _SplitMix64,
    count: int,
    syllables: tuple[int, int],
    suffixes: tuple[str, ...],
    taken: set[str],
) -> tuple[str, ...]:
    """``count`` distinct new words, shortest first, so that frequent words are short."""
    low, high = syllables
    words: list[str] = []
    while len(words) < count:
        word = _syllables(rng, low + rng.below(high - low + 1)) + rng.pick(suffixes)
        if word not in taken and word not in _RESERVED:
            taken.add(word)
            words.append(word)
    words.sort(key=len)
    return tuple(words)


def _sample(rng: _SplitMix64, items: tuple[str, ...], k: int) -> tuple[str, ...]:
    """``k`` distinct items in random order (a partial Fisher-Yates shuffle)."""
    pool = list(items)
    for i in range(k):
        j = i + rng.below(len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return tuple(pool[:k])


@dataclass(frozen=True)
class _Topic:
    title: str
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    adjectives: tuple[str, ...]


@dataclass(frozen=True)
class _Lexicon:
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    adjectives: tuple[str, ...]
    names: tuple[str, ...]
    topics: tuple[_Topic, ...]

    @classmethod
    def build(cls, rng: _SplitMix64) -> _Lexicon:
        taken: set[str] = set()
        nouns = _word_list(rng, 400, (1, 3), tuple(_FINALS), taken)
        verbs = _word_list(rng, 150, (1, 2), ("",), taken)
        adjectives = _word_list(rng, 120, (1, 2), _ADJ_SUFFIXES, taken)
        names = _word_list(rng, 60, (2, 2), ("", "n", "r"), taken)
        names = tuple(name.capitalize() for name in names)
        topics = tuple(
            _Topic(
                title=nouns[40 + rng.below(len(nouns) - 40)].capitalize(),
                nouns=_sample(rng, nouns, 24),
                verbs=_sample(rng, verbs, 8),
                adjectives=_sample(rng, adjectives, 8),
            )
            for _ in range(16)
        )
        return cls(nouns, verbs, adjectives, names, topics)


class _DocumentWriter:
    """Writes one document; its fields are the document-level state a model can infer."""

    def __init__(self, rng: _SplitMix64, lexicon: _Lexicon, tables: dict[int, tuple[int, ...]]):
        self.rng = rng
        self.lex = lexicon
        self.tables = tables
        self.topic = lexicon.topics[rng.below(len(lexicon.topics))]
        self.tense = "ed" if rng.chance(1, 2) else "es"
        first = rng.below(len(lexicon.names))
        second = (first + 1 + rng.below(len(lexicon.names) - 1)) % len(lexicon.names)
        self.hero = lexicon.names[first]
        self.friend = lexicon.names[second]

    def _draw(self, topical: tuple[str, ...], general: tuple[str, ...]) -> str:
        words = topical if self.rng.chance(3, 5) else general
        return self.rng.zipf(words, self.tables[len(words)])

    def noun(self) -> str:
        return self._draw(self.topic.nouns, self.lex.nouns)

    def verb(self) -> str:
        return self._draw(self.topic.verbs, self.lex.verbs) + self.tense

    def adjective(self) -> str:
        return self._draw(self.topic.adjectives, self.lex.adjectives)

    def noun_phrase(self) -> str:
        r = self.rng.below(20)
        if r < 4:
            return self.hero
        if r < 6:
            return self.friend
        if r < 10:
            return f"the {self.adjective()} {self.noun()}"
        if r < 17:
            return f"the {self.noun()}"
        return f"a {self.noun()}"

    def clause(self) -> str:
        r = self.rng.below(10)
        subject, verb = self.noun_phrase(), self.verb()
        if r < 2:
            return f"{subject} {verb}"
        if r < 7:
            return f"{subject} {verb} {self.noun_phrase()}"
        prep = self.rng.pick(_PREPOSITIONS)
        return f"{subject} {verb} {self.noun_phrase()} {prep} {self.noun_phrase()}"

    def prose(self) -> str:
        r = self.rng.below(10)
        text = self.clause()
        if r == 7:
            text = f"{text}, and {self.clause()}"
        elif r == 8:
            text = f"{text}, but {self.clause()}"
        elif r == 9:
            text = f"{text} because {self.clause()}"
        return _capitalize(text) + "."

    def record(self) -> str:
        rng = self.rng
        n_keys = 1 + rng.below(3)
        keys: list[str] = []
        while len(keys) < n_keys:
            key = _syllables(rng, 1 + rng.below(2))
            if key not in keys and key not in _RESERVED:
                keys.append(key)
        values = [str(rng.below(1000)) for _ in keys]
        head = "let " + ", ".join(f"{k} = {v}" for k, v in zip(keys, values, strict=True)) + "."
        order = list(range(len(keys)))
        for i in range(len(order) - 1, 0, -1):
            j = rng.below(i + 1)
            order[i], order[j] = order[j], order[i]
        recalls: list[str] = []
        for i in order[: 1 + rng.below(2)]:
            recall = f"{keys[i]} is {values[i]}."
            if len(" ".join([head, *recalls, recall])) <= RECORD_WINDOW_BYTES:
                recalls.append(recall)
        filler = f"{self.noun_phrase()} {self.verb()}."
        if len(" ".join([head, filler, *recalls])) <= RECORD_WINDOW_BYTES:
            return " ".join([head, filler, *recalls])
        return " ".join([head, *recalls])

    def arithmetic(self) -> str:
        rng = self.rng
        equations = []
        for _ in range(1 + rng.below(3)):
            op = rng.below(3)
            if op == 0:
                a, b = rng.below(100), rng.below(100)
                equations.append(f"{a}+{b}={a + b}")
            elif op == 1:
                a, b = rng.below(200), rng.below(100)
                a, b = max(a, b), min(a, b)
                equations.append(f"{a}-{b}={a - b}")
            else:
                a, b = rng.below(13), rng.below(13)
                equations.append(f"{a}*{b}={a * b}")
        return f"{rng.pick(_CONNECTIVES)} {', '.join(equations)}."

    def counting(self) -> str:
        rng = self.rng
        start, step = rng.below(60), 1 + rng.below(9)
        terms = ", ".join(str(start + i * step) for i in range(4 + rng.below(5)))
        return f"Count {terms}."

    def nested(self, depth: int) -> str:
        parts = []
        for _ in range(1 + self.rng.below(3)):
            if depth < 3 and self.rng.chance(1, 3):
                parts.append(self.nested(depth + 1))
            else:
                parts.append(self.noun())
        opening, closing = ("(", ")") if self.rng.chance(1, 2) else ("[", "]")
        return opening + " ".join(parts) + closing

    def brackets(self) -> str:
        return f"{self.hero} kept {self.nested(0)}."

    def quote(self) -> str:
        speaker = self.hero if self.rng.chance(2, 3) else self.friend
        return f'{speaker} said, "{self.prose()}"'

    def sentence(self) -> str:
        r = self.rng.below(100)
        if r < 60:
            return self.prose()
        if r < 72:
            return self.record()
        if r < 80:
            return self.arithmetic()
        if r < 87:
            return self.counting()
        if r < 94:
            return self.brackets()
        return self.quote()

    def document(self) -> str:
        rng = self.rng
        paragraphs = [f"= {self.topic.title} =\n"]
        for _ in range(3 + rng.below(6)):
            sentences = [self.sentence() for _ in range(2 + rng.below(5))]
            paragraphs.append(" ".join(sentences) + "\n")
        paragraphs.append("\n")
        return "".join(paragraphs)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def generate_corpus(seed: int, n_bytes: int) -> bytes:
    """Exactly ``n_bytes`` of ASCII text, the same bytes for the same seed everywhere.

    ``seed`` is reduced modulo 2**64. Generating 1 MB takes well under two seconds
    on one core.
    """
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be non-negative, got {n_bytes}")
    rng = _SplitMix64(seed)
    lexicon = _Lexicon.build(rng)
    sizes = {len(lexicon.nouns), len(lexicon.verbs), len(lexicon.adjectives)}
    sizes |= {len(t.nouns) for t in lexicon.topics} | {len(t.verbs) for t in lexicon.topics}
    sizes |= {len(t.adjectives) for t in lexicon.topics}
    tables = {n: _zipf_cumulative(n) for n in sorted(sizes)}
    parts: list[str] = []
    written = 0
    while written < n_bytes:
        document = _DocumentWriter(rng, lexicon, tables).document()
        parts.append(document)
        written += len(document)
    return "".join(parts)[:n_bytes].encode("ascii")


def corpus_digest(data: bytes) -> str:
    """The sha256 of the bytes, hex: a stable name for a corpus in run metadata."""
    return hashlib.sha256(data).hexdigest()
