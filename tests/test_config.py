import pytest

from jaxscale.config import ConfigError, expand, load_raw, parse_override, repetition_seed


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lists_and_arrays_of_tables_are_sweep_axes(tmp_path):
    path = write(tmp_path, """
[[model]]
d_model = 16
d_mlp = 64
n_layers = 1
[[model]]
d_model = 32
d_mlp = 128
n_layers = 2
[train]
tokens = [1024, 4096, 8192]
lr = [1e-3, 3e-3]
batch_size = 4
[data]
seq_len = 16
""")
    runs = expand(load_raw(path))
    assert len(runs) == 2 * 3 * 2
    assert len({r.run_id for r in runs}) == 12
    assert {(r.config.model.d_model, r.config.model.n_layers) for r in runs} == {(16, 1), (32, 2)}
    assert sorted({r.config.train.tokens for r in runs}) == [1024, 4096, 8192]
    assert all(isinstance(r.config.train.tokens, int) for r in runs)
    assert runs[0].run_id == "000-d16-l1-tokens1024-lr0.001"


def test_overrides_are_toml_values_or_strings(tmp_path):
    path = write(tmp_path, "[train]\ntokens = 2048\nbatch_size = 2\n[data]\nseq_len = 8\n")
    raw = load_raw(path, ["train.tokens=[4096, 8192]", "data.path=some/dir", "train.lr=0.01"])
    assert raw["train"]["tokens"] == [4096, 8192] and raw["data"]["path"] == "some/dir"
    assert parse_override("model.name=big") == ("model.name", "big")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("tokens=5")


@pytest.mark.parametrize("text, message", [
    ("[train]\ntoken = 5\n", r"unknown key train.token; allowed: tokens, batch_size"),
    ("[trian]\ntokens = 5\n", r"unknown section \[trian\]"),
    ("[train]\nbatch_size = 'big'\n", r"train.batch_size: expected int, got 'big'"),
    ("[train]\nbatch_size = 2.5\n", r"train.batch_size: expected int, got 2.5"),
    ("[train]\ntokens = 100\n", r"train.tokens: budget 100 is smaller than one batch \(train.batch_size 16 x data.seq_len 64 = 1024\)"),
    ("[model]\narch = 'rnn'\n", r"model.arch: 'rnn' is not one of tiny, llama"),
    ("[train]\nloss = 'fused'\n", r"train.loss: 'fused' is not one of auto, blocked, stored, full"),
    ("[train]\nloss_chunk = 0\n", r"train.loss_chunk: must be > 0, got 0"),
    ("[model]\nd_model = 30\nn_heads = 4\n", r"model.n_heads: 4 does not divide model.d_model 30"),
    ("[train]\nlr = -1.0\n", r"train.lr: must be >= 0"),
    ("[train]\ntokens = []\n", r"train.tokens: an empty list"),
    ("model = []\n", r"model: an empty array of tables sweeps over nothing"),
    ("[model]\narch = 'llama'\nd_model = 24\nn_heads = 8\n", r"model.n_heads: 8 heads .* odd head size \(3\)"),
    ("[tokenizer]\nvocab_size = 100\n", r"tokenizer.vocab_size: must be >= 256, got 100"),
    ("[model]\nn_kv_heads = 1\n", r"model.n_kv_heads: only model.arch = 'llama' groups"),
    ("[train]\ntokens = [2048, 2048]\nbatch_size = 2\n[data]\nseq_len = 8\n",
     r"runs 0 and 1 of the sweep are both labelled 'tokens2048'"),
    ("[[model]]\nname = 'a/b'\n[[model]]\nname = 'a_b'\n", r"both labelled 'a_b'"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        expand(load_raw(write(tmp_path, text)))


def test_arrays_of_any_section_are_labelled_by_their_values(tmp_path):
    path = write(tmp_path, "[data]\nseq_len = 8\n[[train]]\nbatch_size = 4\ntokens = 1024\n[[train]]\nbatch_size = 2\n")
    runs = expand(load_raw(path))
    assert [r.run_id for r in runs] == ["000-batch_size4-tokens1024", "001-batch_size2"]
    assert [(r.config.train.batch_size, r.config.train.tokens) for r in runs] == [(4, 1024), (2, 100_000)]


@pytest.mark.parametrize("content, override, message", [
    (b"data = 5\n", "data.seq_len=3", r"\[data\]: expected a table of keys, got 5 \(so data.seq_len cannot be set\)"),
    (b"model = [1]\n", "model.d_model=3", r"\[model\]: expected a table of keys, got 1"),
    (b"\x00\xff\xfe", None, r"c.toml: not valid TOML \('utf-8' codec can't decode"),
])
def test_a_file_that_is_not_a_config_of_tables_is_one_error(tmp_path, content, override, message):
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_raw(path, [override] if override else [])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.toml not found"):
        load_raw(tmp_path / "nope.toml")


def test_repetitions_get_distinct_deterministic_seeds(tmp_path):
    path = write(tmp_path, "[sweep]\nrepetitions = 4\n[train]\ntokens = [2048, 4096]\nseed = 7\n")
    runs = expand(load_raw(path))
    assert len(runs) == 8
    seeds = [r.config.train.seed for r in runs if r.config.train.tokens == 2048]
    assert len(set(seeds)) == 4
    # the same repetition index has the same seed at every grid point, and does not depend on the sweep's size
    assert seeds == [r.config.train.seed for r in runs if r.config.train.tokens == 4096]
    assert seeds == [repetition_seed(7, i) for i in range(4)]


def test_random_order_is_a_seeded_permutation(tmp_path):
    text = "[sweep]\nrepetitions = 3\norder = '{order}'\nseed = {seed}\n[train]\ntokens = [2048, 4096]\n"
    sequential = expand(load_raw(write(tmp_path, text.format(order="sequential", seed=0))))
    shuffled = expand(load_raw(write(tmp_path, text.format(order="random", seed=5))))
    again = expand(load_raw(write(tmp_path, text.format(order="random", seed=5))))
    other = expand(load_raw(write(tmp_path, text.format(order="random", seed=6))))
    ids = [r.run_id for r in sequential]
    assert sorted(r.run_id for r in shuffled) == sorted(ids) and [r.run_id for r in shuffled] != ids
    assert [r.run_id for r in shuffled] == [r.run_id for r in again] != [r.run_id for r in other]
