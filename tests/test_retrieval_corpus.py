import pytest

from labs_lib.retrieval import corpus


@pytest.fixture(scope="module")
def words_corpus():
    return corpus.build_corpus(chunk_tokens=64, overlap=16, n_queries=60, seed=3)


def test_chunk_sizes_and_overlap_are_exact(words_corpus):
    chunks = words_corpus.chunks
    assert [c.id for c in chunks] == list(range(len(chunks)))
    by_topic = {}
    for c in chunks:
        by_topic.setdefault(c.topic, []).append(c)
    for topic_chunks in by_topic.values():
        for a, b in zip(topic_chunks, topic_chunks[1:], strict=False):
            wa, wb = a.text.split(), b.text.split()
            assert len(wa) == a.n_tokens == 64  # every chunk but a topic's last is full
            assert b.start - a.start == 48
            assert wa[-16:] == wb[:16]  # consecutive chunks share exactly `overlap` words
        last = topic_chunks[-1]
        assert 1 <= len(last.text.split()) == last.n_tokens <= 64
        if len(topic_chunks) > 1:
            assert last.n_tokens > 16  # the last window adds new words


def test_queries_answers_exist_and_sentence_is_held_out(words_corpus):
    c = words_corpus
    assert len(c.queries) == 60 and len({q.text for q in c.queries}) == 60
    for q in c.queries:
        assert 1 <= len(q.answers) <= 2
        for a in q.answers:
            assert 0 <= a < len(c.chunks) and c.chunks[a].topic == q.topic
        assert 8 <= len(q.text.split()) <= 40
    all_text = "\n".join(c.texts())
    for q in c.queries:
        assert q.text not in all_text  # in no indexed chunk at all
    assert [set(q.answers) for q in c.queries] == c.relevant()


def test_answer_chunk_covers_where_the_sentence_was():
    topics = {"t": "Intro words here. " + " ".join(f"w{i}" for i in range(30)) + ". "
              "This sentence is the one that will be held out. "
              + " ".join(f"v{i}" for i in range(30)) + "."}
    c = corpus.build_corpus(chunk_tokens=10, overlap=2, n_queries=1, seed=0, topics=topics,
                            min_words=10, max_words=10)
    (q,) = c.queries
    assert q.text == "This sentence is the one that will be held out."
    joined = " ".join(c.chunks[a].text for a in q.answers)
    assert "w29." in joined and "v0" in joined  # the words on both sides of the gap


def test_deterministic_and_seed_dependent():
    a = corpus.build_corpus(chunk_tokens=64, overlap=16, n_queries=20, seed=1)
    b = corpus.build_corpus(chunk_tokens=64, overlap=16, n_queries=20, seed=1)
    c = corpus.build_corpus(chunk_tokens=64, overlap=16, n_queries=20, seed=2)
    assert a.queries == b.queries and a.chunks == b.chunks
    assert [q.text for q in a.queries] != [q.text for q in c.queries]


def test_headings_come_from_the_topic_text(words_corpus):
    heads = {c.topic: c.heading for c in words_corpus.chunks}
    assert heads["assert"] == 'The "assert" statement'
    assert words_corpus.chunks[0].text_with_heading.startswith(words_corpus.chunks[0].heading + "\n")


def test_hf_tokenizer_chunks_count_model_tokens():
    from transformers import AutoTokenizer

    from labs_lib.models import MINILM, resolve

    tok = AutoTokenizer.from_pretrained(resolve(MINILM).path)
    topics = {k: v for k, v in list(corpus.load_topics().items())[:6]}
    c = corpus.build_corpus(chunk_tokens=32, overlap=8, n_queries=5, seed=0, tokenizer=tok,
                            topics=topics)
    spans = {}
    for ch in c.chunks:
        spans.setdefault(ch.topic, []).append(ch)
    for chs in spans.values():
        for a, b in zip(chs, chs[1:], strict=False):
            assert a.n_tokens == 32 and b.start - a.start == 24
    full = [ch for ch in c.chunks if ch.n_tokens == 32]
    # re-tokenizing a chunk's text gives (about) its token count: wordpiece is stable on slices
    n = [len(tok(ch.text, add_special_tokens=False)["input_ids"]) for ch in full[:50]]
    assert sum(x == 32 for x in n) >= 0.9 * len(n)
    assert "tokens of" in c.rule


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="overlap"):
        corpus.build_corpus(chunk_tokens=8, overlap=8)
    with pytest.raises(ValueError, match="n_queries=100000"):
        corpus.build_corpus(n_queries=100_000)
    with pytest.raises(ValueError, match="fast"):
        corpus.token_spans("x", tokenizer=object())
