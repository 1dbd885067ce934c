import subprocess
import sys

import numpy as np
import pytest

from conftest import ENWIKI, GPT2, LLAMA_TOKENIZER, ROOT, needs_shared
from jaxscale.config import ConfigError, DataConfig, TokenizerConfig
from jaxscale.data import tokenize
from jaxscale.data.corpora import from_directory, from_hugging_face, load_corpus, stdlib_docstrings
from jaxscale.data.loader import eval_batches, plan_budget, train_dataset, train_iterator
from jaxscale.data.tokenize import load_tokenizer, token_splits


@needs_shared(ENWIKI)
def test_directory_corpus_reads_wikitext_layout():
    corpus = from_directory(ENWIKI)
    assert corpus.splits["train"].startswith((ENWIKI / "train.txt").read_text()[:200])
    assert len(corpus.splits["valid"]) == len((ENWIKI / "valid.txt").read_text())


def test_missing_directory_and_split_are_named(tmp_path):
    with pytest.raises(ConfigError, match="data.path: corpus directory .*nowhere not found"):
        load_corpus(DataConfig(path=str(tmp_path / "nowhere")))
    (tmp_path / "corpus.txt").write_text("text")
    with pytest.raises(ConfigError, match="corpus directory .*corpus.txt is a file, not a directory; expected a dir"):
        load_corpus(DataConfig(path=str(tmp_path / "corpus.txt")))
    (tmp_path / "wiki.train.raw").write_text("text")
    with pytest.raises(ConfigError, match="has no valid split; expected one of wiki.valid.raw"):
        from_directory(tmp_path)


def test_hugging_face_source_points_to_the_local_option():
    # offline here: whether or not `datasets` is installed, the error names the local-directory option
    with pytest.raises(ConfigError, match="data.path at a local directory"):
        from_hugging_face("wikitext-2-raw-v1")


def test_hugging_face_wikitext_rows_make_the_same_corpus_as_its_raw_files(tmp_path, monkeypatch):
    # `datasets` stands in at its lowest layer: load_dataset("wikitext", name) gives each split as rows of one line
    # each, newline kept, and "" for a blank line, as the hub's wikitext builder does (row 0 of wikitext-2-raw-v1's
    # train is "", row 1 " = Valkyria Chronicles III = \n"). The raw files' blank lines are " \n". The corpus must
    # be the raw files, as data.path gives them: the blank lines between headings and paragraphs included.
    raw = {"wiki.train.raw": " \n = Title = \n \n Some text , and more .\n \n", "wiki.valid.raw": " \n = Valid = \n",
           "wiki.test.raw": " Test line .\n \n \n"}
    for name, text in raw.items():
        (tmp_path / name).write_text(text)
    lines = {split: raw[f"wiki.{file}.raw"].splitlines(keepends=True)
             for split, file in (("train", "train"), ("validation", "valid"), ("test", "test"))}
    rows = {split: {"text": [line if line.strip() else "" for line in split_lines]} for split, split_lines in lines.items()}
    asked = []
    fake = type(sys)("datasets")
    fake.load_dataset = lambda path, name: asked.append((path, name)) or rows
    monkeypatch.setitem(sys.modules, "datasets", fake)
    corpus = from_hugging_face("wikitext-2-raw-v1")
    assert asked == [("wikitext", "wikitext-2-raw-v1")] and corpus.name == "wikitext/wikitext-2-raw-v1"
    assert corpus.splits == from_directory(tmp_path).splits


def test_embedded_corpus_is_english_prose_split_by_module():
    corpus = stdlib_docstrings()
    sizes = {s: len(t) for s, t in corpus.splits.items()}
    assert sizes["train"] > 800_000 and sizes["valid"] > 20_000 and sizes["test"] > 20_000
    words = corpus.splits["train"].split()
    common = sum(w.lower() in {"the", "a", "of", "to", "is", "and", "in"} for w in words)
    assert common / len(words) > 0.1  # English function words are ~15-25% of running prose
    assert corpus.splits["valid"][:500] not in corpus.splits["train"]


@needs_shared(GPT2)
def test_gpt2_tokenizer_file_gives_published_ids():
    tok = load_tokenizer(TokenizerConfig(path=str(GPT2)), corpus=None)
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world").tolist() == [15496, 995]


@needs_shared(LLAMA_TOKENIZER)
def test_sentencepiece_model_gives_published_ids():
    tok = load_tokenizer(TokenizerConfig(path=str(LLAMA_TOKENIZER)), corpus=None)
    assert tok.vocab_size == 32000
    assert tok.encode("Hello world").tolist() == [15043, 3186]


# ../shared/data/README.md: each train split's tokens, encoded in one call
PUBLISHED_TOKENS = {("enwiki-sample", GPT2): 626_983, ("enwiki-sample", LLAMA_TOKENIZER): 741_822,
                    ("austen", GPT2): 824_863, ("austen", LLAMA_TOKENIZER): 883_900}


@pytest.mark.parametrize("corpus, path", list(PUBLISHED_TOKENS),
                         ids=[f"{c}-{p.parent.name}" for c, p in PUBLISHED_TOKENS])
def test_train_splits_have_the_published_whole_text_token_counts(corpus, path):
    """Encoded line by line they were 632,017, 755,653, 824,902 and 873,152: SentencePiece put a "▁" before every
    line, GPT-2 split no blank lines before a word."""
    text_path = ENWIKI.parent / corpus / "train.txt"
    if not (text_path.is_file() and path.is_file()):
        pytest.skip(f"needs {text_path} and {path}")
    ids = load_tokenizer(TokenizerConfig(path=str(path)), corpus=None).encode(text_path.read_text())
    assert len(ids) == PUBLISHED_TOKENS[corpus, path]


TRICKY = "x \n\n\n  indented\n\t\ttab\n123456\n\n\u03c0\u22483.14159 caf\u00e9\n \n = Heading = \n\n!!\n?\n"


@needs_shared(ENWIKI)
@pytest.mark.parametrize("which", ["gpt2", "llama", "trained bpe"])
def test_pieces_give_the_ids_of_the_whole_text(which, tmp_path, monkeypatch):
    """Cut every 64 characters (thousands of cuts, blank lines, indents, digits and non-ASCII around them), a
    split's ids equal the tokenizer's own encoding of the whole text in one call, without falling back to it."""
    monkeypatch.setenv("JAXSCALE_CACHE", str(tmp_path))
    monkeypatch.setattr(tokenize, "PIECE_CHARS", 64)
    text = (ENWIKI / "valid.txt").read_text() + TRICKY * 50
    if which == "gpt2":
        from tokenizers import Tokenizer
        tok, whole = load_tokenizer(TokenizerConfig(path=str(GPT2)), None), Tokenizer.from_file(str(GPT2))
        reference = whole.encode(text, add_special_tokens=False).ids
    elif which == "llama":
        if not LLAMA_TOKENIZER.is_file():
            pytest.skip(f"needs {LLAMA_TOKENIZER}")
        import sentencepiece as spm
        tok = load_tokenizer(TokenizerConfig(path=str(LLAMA_TOKENIZER)), None)
        reference = spm.SentencePieceProcessor(model_file=str(LLAMA_TOKENIZER)).encode(text)
    else:
        from tokenizers import Tokenizer
        corpus = type(stdlib_docstrings())(name="t", splits={"train": text, "valid": "v", "test": "t"})
        tok = load_tokenizer(TokenizerConfig(vocab_size=1000), corpus)
        reference = Tokenizer.from_file(str(next((tmp_path / "tokenizers").glob("*.json")))).encode(text).ids
    longest = []
    real = tok.encode_batch
    spied = type(tok)(tok.name, tok.vocab_size, tok.fingerprint,
                      lambda texts: longest.append(max(map(len, texts))) or real(texts))
    assert spied.encode(text).tolist() == reference
    assert max(longest) < len(text) // 10  # pieces (the longest a paragraph), not the whole-text fallback


def test_trained_bpe_round_trips_and_has_the_vocabulary_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSCALE_CACHE", str(tmp_path))
    text = "the quick brown fox jumps over the lazy dog\n" * 200 + "pack my box with five dozen liquor jugs\n" * 200
    corpus = type(stdlib_docstrings())(name="t", splits={"train": text, "valid": text[:300], "test": text[:300]})
    tok = load_tokenizer(TokenizerConfig(vocab_size=300), corpus)
    assert tok.vocab_size <= 300
    from tokenizers import Tokenizer
    saved = Tokenizer.from_file(str(next((tmp_path / "tokenizers").glob("*.json"))))
    ids = tok.encode("the lazy dog\n")
    assert saved.decode(ids.tolist()) == "the lazy dog\n"


@needs_shared(ENWIKI)
def test_token_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSCALE_CACHE", str(tmp_path))
    corpus = from_directory(ENWIKI)
    tok = load_tokenizer(TokenizerConfig(path=str(GPT2)), corpus)
    first = token_splits(corpus, tok)
    assert isinstance(first["train"], np.memmap) and first["train"].dtype == np.uint16
    assert len(first["train"]) == 626_983  # GPT-2 tokens, by ../shared/data/README.md
    calls = []
    monkeypatch.setattr(tokenize.Tokenizer, "encode", lambda self, text: calls.append(1))
    again = token_splits(corpus, tok)
    assert not calls and np.array_equal(first["valid"], again["valid"])


def test_budget_gives_exact_steps_and_counts_epochs():
    budget = plan_budget(n_tokens=10_001, seq_len=10, batch_size=4, budget=5_000)
    assert budget.steps == 125 and budget.tokens == 5_000 and budget.windows == 1000
    assert budget.epochs == pytest.approx(0.5)
    assert plan_budget(10_001, 10, 4, 25_000).epochs == pytest.approx(2.5)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        plan_budget(30, 10, 4, 1000)


def test_loader_delivers_exact_steps_and_reshuffles_each_epoch():
    tokens = np.arange(401, dtype=np.uint16)  # 100 windows of 4 + 1
    ds = train_dataset(tokens, seq_len=4, batch_size=10, steps=25, seed=3)  # 2.5 epochs
    batches = list(train_iterator(ds))
    assert len(batches) == 25 and all(b.shape == (10, 5) for b in batches)
    starts = np.concatenate([b[:, 0] for b in batches]) // 4
    epoch0, epoch1 = starts[:100], starts[100:200]
    assert sorted(epoch0) == list(range(100)) and sorted(epoch1) == list(range(100))
    assert not np.array_equal(epoch0, epoch1)
    assert all(np.array_equal(b[:, 1:], b[:, :-1] + 1) for b in batches)  # targets are the next tokens


def test_loader_state_restores_position():
    tokens = np.arange(401, dtype=np.uint16)
    ds = train_dataset(tokens, seq_len=4, batch_size=10, steps=20, seed=1)
    it = train_iterator(ds)
    for _ in range(7):
        next(it)
    state = it.get_state()
    rest = [b.copy() for b in it]
    resumed = train_iterator(ds)
    resumed.set_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(rest, resumed, strict=True))


def test_process_shards_make_up_the_global_batch():
    tokens = np.arange(801, dtype=np.uint16)
    whole = list(train_iterator(train_dataset(tokens, 4, 8, 10, seed=5)))
    parts = [list(train_iterator(train_dataset(tokens, 4, 8, 10, seed=5, shard_index=i, shard_count=2))) for i in (0, 1)]
    for step, batch in enumerate(whole):
        merged = np.concatenate([parts[0][step], parts[1][step]])
        assert sorted(map(tuple, merged)) == sorted(map(tuple, batch))


def test_eval_batches_are_the_first_windows_in_order():
    tokens = np.arange(101, dtype=np.uint16)
    batches = eval_batches(tokens, seq_len=4, batch_size=3, max_tokens=24)
    assert [b.shape for b in batches] == [(3, 5), (3, 5)]
    assert batches[0][:, 0].tolist() == [0, 4, 8]


def test_eval_batches_split_evenly_over_the_mesh():
    tokens = np.arange(101, dtype=np.uint16)  # 25 windows of 4 + 1
    batches = eval_batches(tokens, seq_len=4, batch_size=8, max_tokens=20, multiple=2)  # 5 windows: 4 of them
    assert [b[:, 0].tolist() for b in batches] == [[0, 4, 8, 12]]
    with pytest.raises(ConfigError, match=r"train.eval_tokens: 1 held-out window\(s\) of data.seq_len 4 cannot be "
                                          r"split over mesh data x fsdp = 8; allowed: at least 32 tokens"):
        eval_batches(tokens, seq_len=4, batch_size=8, max_tokens=4, multiple=8)


def test_files_that_are_not_text_or_tokenizers_are_named(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"{split}.txt").write_text("plain text\n")
    (corpus / "valid.txt").write_bytes(b"caf\xe9\n")  # Latin-1
    with pytest.raises(ConfigError, match=r"data.path: .*valid.txt is not UTF-8 text"):
        from_directory(corpus)
    for name, content, words in (("t.json", '{"a": 1}', "is not a Hugging Face tokenizer.json"),
                                 ("t.model", "not a model", "is not a SentencePiece model"),
                                 ("t.txt", "", "is neither a Hugging Face tokenizer.json nor a SentencePiece")):
        (tmp_path / name).write_text(content)
        with pytest.raises(ConfigError, match=f"tokenizer.path: .*{name} {words}") as err:
            load_tokenizer(TokenizerConfig(path=str(tmp_path / name)), None)
        assert "\n" not in str(err.value)
    monkeypatch.setenv("JAXSCALE_CACHE", str(tmp_path / "t.txt"))
    with pytest.raises(ConfigError, match=r"JAXSCALE_CACHE: .*t.txt is a file; it must name a directory"):
        load_corpus(DataConfig())  # the embedded corpus, harvested into the cache


@needs_shared(GPT2)
def test_a_damaged_token_cache_is_tokenised_again(tmp_path, monkeypatch):
    """Truncated, emptied, or zeroed in place (what a crash before the disk flushed can leave): each is noticed and
    the split tokenised again, to the ids the tokenizer gives the text."""
    from jaxscale.data.corpora import Corpus

    monkeypatch.setenv("JAXSCALE_CACHE", str(tmp_path))
    corpus = Corpus("tiny", {split: f"The {split} split, which has a few words in it.\n" * 50 for split in
                             ("train", "valid", "test")})
    tokenizer = load_tokenizer(TokenizerConfig(path=str(GPT2)), corpus)
    expected = tokenizer.encode(corpus.splits["train"])
    token_splits(corpus, tokenizer)
    path = next(tmp_path.glob("tokens/*/train.npy"))
    whole = path.read_bytes()
    for damaged in (whole[:len(whole) // 2], b"", whole[:128] + bytes(len(whole) - 128)):
        path.write_bytes(damaged)
        with pytest.warns(UserWarning, match="train.npy is damaged or incomplete; tokenising train again"):
            ids = token_splits(corpus, tokenizer)["train"]
        assert np.array_equal(ids, expected) and path.read_bytes() == whole


def test_a_corpus_is_read_as_written_and_the_stdlib_harvest_ignores_where_python_lives(tmp_path):
    from jaxscale.data.corpora import _harvest

    corpus = tmp_path / "crlf"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"{split}.txt").write_bytes(b"First line.\r\nSecond line.\r\n")
    assert from_directory(corpus).splits["train"] == "First line.\r\nSecond line.\r\n"
    root = tmp_path / "tests" / "lib" / "python3.11"  # a prefix with "tests" in it: not the stdlib's own tests
    (root / "email").mkdir(parents=True)
    (root / "email" / "parser.py").write_text('"""This module reads messages and turns them into objects for you."""\n')
    (root / "test").mkdir()
    (root / "test" / "test_parser.py").write_text('"""This module tests the parser against many messages, slowly."""\n')
    harvest = _harvest(root)  # the first module goes to valid, the second would go to test
    assert harvest["valid"] == "This module reads messages and turns them into objects for you.\n"
    assert harvest["test"] == "\n"


@needs_shared(ENWIKI)
def test_a_given_path_overrides_the_configs_source():
    corpus = load_corpus(DataConfig(source="hf", path=str(ENWIKI)))
    assert corpus.name == "enwiki-sample"


def test_a_budget_past_max_epochs_is_an_error_naming_the_passes():
    assert plan_budget(10_001, 100, 10, 10_000, max_epochs=1.0).epochs == 1.0  # exactly one pass is allowed
    with pytest.raises(ConfigError, match=r"train.tokens 20,000: 2.0 passes .* data.max_epochs = 1"):
        plan_budget(10_001, 100, 10, 20_000, max_epochs=1.0)
    assert plan_budget(10_001, 100, 10, 20_000).epochs == 2.0  # no limit by default


@needs_shared(LLAMA_TOKENIZER)
def test_the_tinyllama_study_refuses_the_embedded_corpus(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jaxscale.train", "--config", str(ROOT / "configs" / "tinyllama_tokens.toml"),
                           "--out", str(out), f"tokenizer.path={LLAMA_TOKENIZER}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    # the embedded corpus is ~300k Llama tokens: 2M tokens are several passes
    assert len(lines) == 1 and "passes over a train split" in lines[0] and "data.max_epochs = 1" in lines[0]
    assert not out.exists()
