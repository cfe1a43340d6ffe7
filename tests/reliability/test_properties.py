"""Property-based tests (hypothesis) of the two parsers of the user's world that every run goes through:
the config parser (any dotted keys and values: a valid config or one UserError, never another exception; a
valid config survives a YAML round trip) and the loader's order (any block, batch and world size and seed:
every block once per epoch across ranks; a resume from any position continues the same sequence)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2kit.config import all_keys, build_config, load_yaml, parse_overrides
from gpt2kit.errors import UserError
from gpt2kit.loader import BlockStream, ExampleLoader, PackedLoader, next_slice

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = all_keys()

# values as a user types or a YAML file holds them: numbers, words, booleans, nulls, lists, garbage
VALUES = st.one_of(
    st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "null", "none", "", "auto", "fp32", "bf16", "cosine", "lora", "full", "1e-3",
                     "0", "-1", "0.5", "nan", "inf", "a,b", "text", "gpt2", "tiny", "[1, 2]", "{a: 1}"]),
    st.text(max_size=12),
    st.integers(-1000, 10**6), st.floats(-1e6, 1e6), st.booleans(), st.none(),
    st.lists(st.integers(0, 5), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
DOTTED = st.one_of(st.sampled_from(KEYS), st.text(max_size=15).map(lambda s: f"model.{s}"),
                   st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,10}", fullmatch=True))


@SETTINGS
@given(st.dictionaries(DOTTED, VALUES, max_size=6))
def test_config_is_valid_or_one_user_error(overrides):
    try:
        config = build_config(None, overrides)
    except UserError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    # valid: it round-trips through the YAML a run writes (config.yaml) to the same config
    again = build_config(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_a_yaml_file_is_valid_or_one_user_error(tmp_path, overrides):
    nested: dict = {}
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(nested))
    try:
        config = build_config(load_yaml(path))
    except UserError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    assert build_config(yaml.safe_load(config.to_yaml())) == config


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from(["--optim.lr", "--model.n_layer=2", "3e-4", "--", "--x", "-v", "=", ".",
                                           "--a.\nb", "--train.seed=\n"]),
                          st.text(max_size=8), st.text(max_size=8).map(lambda s: "--model." + s)), max_size=6))
def test_command_line_overrides_parse_or_one_user_error(argv):
    try:
        out = parse_overrides(argv)
    except UserError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    assert all("." in k for k in out)


# ---------------------------------------------------------------- the loader's order


def _epoch_visits(n: int, batch: int, world: int, seed: int, shuffle: bool, aligned: bool, epochs: int):
    """Items each rank takes, batch by batch, until `epochs` epochs are consumed (all ranks together)."""
    stream = BlockStream(n, seed, shuffle)
    position, seen = 0, []
    while position < epochs * n:
        step = []
        for rank in range(world):
            ids, nxt = next_slice(stream, position, rank, batch, world, aligned)
            step.append(ids.tolist())
        position = nxt
        seen.append(step)
    return seen, position


@SETTINGS
@given(n=st.integers(1, 60), batch=st.integers(1, 9), world=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       shuffle=st.booleans())
def test_every_block_once_per_epoch_across_ranks(n, batch, world, seed, shuffle):
    # epoch-aligned (training by epochs): each epoch is exactly a permutation of the items
    seen, position = _epoch_visits(n, batch, world, seed, shuffle, True, 2)
    assert position == 2 * n
    flat = [i for step in seen for ids in step for i in ids]
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n:]) == list(range(n))
    # by steps: the stream is epoch after epoch, every batch full, nothing skipped or repeated within an epoch
    seen, position = _epoch_visits(n, batch, world, seed, shuffle, False, 3)
    flat = [i for step in seen for ids in step for i in ids]
    assert all(len(ids) == batch for step in seen for ids in step)
    for e in range(3):
        assert sorted(flat[e * n : (e + 1) * n]) == list(range(n))


@pytest.fixture(scope="module")
def small_data(corpus_dir, small_tokenizer, tmp_path_factory):
    """~1,000 tokens: a few to a hundred blocks, so a handful of steps crosses epochs."""
    from gpt2kit.prepare import prepare

    src = tmp_path_factory.mktemp("small") / "doc.txt"
    src.write_text((corpus_dir / "bisect.py").read_text()[:3000])
    out = src.parent / "data"
    prepare([str(src)], small_tokenizer, out, val_fraction=0, progress=False, workers=1)
    return out


@SETTINGS
@given(data=st.data(), block_size=st.integers(8, 64), batch=st.integers(1, 6), world=st.integers(1, 3),
       seed=st.integers(0, 2**31), aligned=st.booleans())
def test_packed_loader_resumes_the_same_sequence(small_data, data, block_size, batch, world, seed, aligned):
    def loaders():
        return [PackedLoader(small_data, "train", block_size, batch, seed=seed, rank=r, world_size=world,
                             epoch_aligned=aligned) for r in range(world)]

    whole = loaders()
    steps = 2 * whole[0].batches_per_epoch + 3
    stop = data.draw(st.integers(0, steps), label="stop")
    expected = [[ld.next_batch()[0].numpy().copy() for ld in whole] for _ in range(steps)]

    first = loaders()
    for _ in range(stop):
        [ld.next_batch() for ld in first]
    states = [json.loads(json.dumps(ld.state_dict())) for ld in first]  # as a checkpoint's state.json holds it
    resumed = loaders()
    for ld, state in zip(resumed, states):
        ld.load_state_dict(state)
    for k in range(stop, steps):
        got = [ld.next_batch()[0].numpy() for ld in resumed]
        for a, b in zip(got, expected[k]):
            np.testing.assert_array_equal(a, b)


@SETTINGS
@given(data=st.data(), n=st.integers(1, 30), batch=st.integers(1, 5), world=st.integers(1, 3),
       seed=st.integers(0, 2**31), aligned=st.booleans())
def test_example_loader_resumes_the_same_sequence(data, n, batch, world, seed, aligned):
    examples = [(np.arange(i % 7 + 1), np.arange(i % 7 + 1) + 1000 * i) for i in range(n)]

    def loaders():
        return [ExampleLoader(examples, batch, pad_id=0, seed=seed, rank=r, world_size=world, epoch_aligned=aligned)
                for r in range(world)]

    whole = loaders()
    steps = 2 * whole[0].batches_per_epoch + 2
    expected = [[ld.next_batch()[1].numpy().copy() for ld in whole] for _ in range(steps)]
    stop = data.draw(st.integers(0, steps), label="stop")
    first = loaders()
    for _ in range(stop):
        [ld.next_batch() for ld in first]
    resumed = loaders()
    for ld, old in zip(resumed, first):
        ld.load_state_dict(json.loads(json.dumps(old.state_dict())))
    for k in range(stop, steps):
        for ld, want in zip(resumed, expected[k]):
            np.testing.assert_array_equal(ld.next_batch()[1].numpy(), want)


def test_a_changed_seed_is_refused_on_resume(prepared_dir):
    a = PackedLoader(prepared_dir, "train", 8, 2, seed=1)
    b = PackedLoader(prepared_dir, "train", 8, 2, seed=2)
    with pytest.raises(UserError, match="seed"):
        b.load_state_dict(a.state_dict())
