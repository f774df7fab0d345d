"""The synthetic corpus: pinned bytes, ASCII, and the structure it promises."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asteria_bench.workload.corpus import (
    DEFAULT_CORPUS_BYTES,
    DEFAULT_CORPUS_SEED,
    RECORD_WINDOW_BYTES,
    corpus_digest,
    generate_corpus,
)

# Pinned on purpose: any change to the generator changes every benchmark's data,
# so it must be a deliberate change that updates these digests.
DIGEST_1234_4096 = "c5b4f0e545329dd7261b285c5e347e1464427a55ef45cc1e4406f741a5ae5430"
DIGEST_DEFAULT = "5bc6faea42be4d84881618d0df2d2e11c69b8be3cdabcc01eb20cad7a7c926e8"

SAMPLE_BYTES = 200_000


@pytest.fixture(scope="module")
def sample_lines() -> list[str]:
    text = generate_corpus(7, SAMPLE_BYTES).decode("ascii")
    return text.split("\n")[:-1]  # the last line may be cut short


def test_small_corpus_digest_is_pinned() -> None:
    assert corpus_digest(generate_corpus(1234, 4096)) == DIGEST_1234_4096


def test_default_corpus_digest_is_pinned() -> None:
    data = generate_corpus(DEFAULT_CORPUS_SEED, DEFAULT_CORPUS_BYTES)
    assert len(data) == DEFAULT_CORPUS_BYTES
    assert corpus_digest(data) == DIGEST_DEFAULT


def test_digest_is_sha256_hex() -> None:
    assert corpus_digest(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_generation_is_deterministic() -> None:
    assert generate_corpus(99, 10_000) == generate_corpus(99, 10_000)


def test_different_seeds_give_different_text() -> None:
    assert generate_corpus(1, 2_000) != generate_corpus(2, 2_000)


def test_negative_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_bytes"):
        generate_corpus(1, -1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=-(2**70), max_value=2**70), n_bytes=st.integers(0, 3_000))
def test_length_is_exact_and_text_is_printable_ascii(seed: int, n_bytes: int) -> None:
    data = generate_corpus(seed, n_bytes)
    assert len(data) == n_bytes
    assert all(32 <= byte < 127 or byte == 10 for byte in data)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), short=st.integers(0, 2_000), extra=st.integers(0, 2_000))
def test_a_longer_corpus_extends_a_shorter_one(seed: int, short: int, extra: int) -> None:
    assert generate_corpus(seed, short + extra)[:short] == generate_corpus(seed, short)


def test_recalled_keys_were_defined_within_the_window(sample_lines: list[str]) -> None:
    recalls = 0
    for line in sample_lines:
        for match in re.finditer(r"\b([a-z]+) is (\d+)\.", line):
            key, value = match.groups()
            window = line[max(0, match.end() - RECORD_WINDOW_BYTES) : match.start()]
            assert re.search(rf"(?:let |, ){key} = {value}[,.]", window), (line, key)
            assert "let " in window
            recalls += 1
    assert recalls > 300


def test_arithmetic_is_correct(sample_lines: list[str]) -> None:
    operations = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    seen: Counter[str] = Counter()
    for line in sample_lines:
        for a, op, b, result in re.findall(r"(\d+)([+*-])(\d+)=(\d+)", line):
            assert operations[op](int(a), int(b)) == int(result), line
            seen[op] += 1
    assert min(seen[op] for op in operations) > 100


def test_counting_sequences_have_a_constant_step(sample_lines: list[str]) -> None:
    sequences = 0
    for line in sample_lines:
        for terms in re.findall(r"Count ((?:\d+, )+\d+)\.", line):
            numbers = [int(term) for term in terms.split(", ")]
            steps = {b - a for a, b in pairwise(numbers)}
            assert len(numbers) >= 4 and len(steps) == 1 and steps.pop() > 0, line
            sequences += 1
    assert sequences > 100


def test_brackets_and_quotes_match_on_every_line(sample_lines: list[str]) -> None:
    pairs = {")": "(", "]": "["}
    nested = 0
    for line in sample_lines:
        stack: list[str] = []
        for char in line:
            if char in "([":
                stack.append(char)
                nested = max(nested, len(stack))
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], line
        assert not stack, line
        assert line.count('"') % 2 == 0, line
    assert nested >= 3


def test_documents_have_titles_names_and_capitalised_sentences(sample_lines: list[str]) -> None:
    titles = [line for line in sample_lines if re.fullmatch(r"= [A-Z][a-z]+ =", line)]
    assert len(titles) > 100
    for line in sample_lines:
        if line and not line.startswith(("=", "let ")):
            assert line[0].isupper(), line


def _documents(lines: list[str]) -> list[list[str]]:
    documents: list[list[str]] = []
    for line in lines:
        if line.startswith("= "):
            documents.append([])
        elif documents:
            documents[-1].extend(re.findall(r"[a-z]{3,}", line))
    return [words for words in documents if len(words) > 60]


def test_a_document_reuses_its_own_vocabulary(sample_lines: list[str]) -> None:
    # The topic makes a document's second half share more words with its own first
    # half than with the first half of the next document.
    documents = _documents(sample_lines)
    own, other = 0.0, 0.0
    for this, following in pairwise(documents):
        half = len(this) // 2
        later = this[half:]
        earlier, elsewhere = set(this[:half]), set(following[: len(following) // 2])
        own += sum(word in earlier for word in later) / len(later)
        other += sum(word in elsewhere for word in later) / len(later)
    assert own > 1.2 * other


def test_word_frequencies_are_skewed(sample_lines: list[str]) -> None:
    counts = Counter(word for line in sample_lines for word in re.findall(r"[a-z]{3,}", line))
    ranked = [count for _, count in counts.most_common()]
    assert len(ranked) > 300
    assert ranked[10] > 5 * ranked[300]
