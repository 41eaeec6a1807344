"""What an outside fuzz of cell bodies and datasets found, one reproducer per test, then a bounded
property-based fuzz of the same surfaces.

The property: every input gives a clean result or a ``DistillError`` with a short message, never
another exception, a hang or unbounded memory. A clean result must also be usable downstream:
a config that dumps to the store, prompts whose rows encode as UTF-8 JSON.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jupyter_distill.core.config import RUN_NAME_PATTERN, DistillConfig
from jupyter_distill.core.data import load_dataset
from jupyter_distill.core.errors import ConfigError, DatasetError, DistillError
from jupyter_distill.core.hashing import content_hash
from jupyter_distill.core.store import RunStore

MAX_MESSAGE = 1000  # characters: an error names the field, the value (shortened) and the fix
MAX_PEAK_MB = 100  # per fuzz case: far above any small input, far below an alias bomb's expansion


def config_outcome(text: str) -> str:
    """from_yaml's outcome class; anything but a config or a short DistillError fails the test."""
    outcome, peak = peak_mb(lambda: _config_outcome(text))
    assert peak < MAX_PEAK_MB, f"{peak:.0f} MB for {text[:200]!r}"
    return outcome


def _config_outcome(text: str) -> str:
    try:
        config = DistillConfig.from_yaml(text)
    except DistillError as exc:
        assert len(str(exc)) < MAX_MESSAGE, str(exc)[:300]
        return type(exc).__name__
    json.dumps(config.to_public_dict(), ensure_ascii=False).encode("utf-8")  # storable as the run's config
    return "ok"


def dataset_outcome(source: Any) -> str:
    outcome, peak = peak_mb(lambda: _dataset_outcome(source))
    assert peak < MAX_PEAK_MB, f"{peak:.0f} MB"
    return outcome


def _dataset_outcome(source: Any) -> str:
    try:
        prompts = load_dataset(source)
    except DistillError as exc:
        assert len(str(exc)) < MAX_MESSAGE, str(exc)[:300]
        return type(exc).__name__
    for prompt in prompts:  # what the store and the teacher request will need
        json.dumps(prompt.row, ensure_ascii=False).encode("utf-8")
        json.dumps(prompt.messages, ensure_ascii=False).encode("utf-8")
    return "ok"


def error_of(work: Any, *args: Any) -> BaseException:
    """The DistillError ``work(*args)`` raises (any other outcome fails the test)."""
    try:
        work(*args)
    except DistillError as exc:
        return exc
    raise AssertionError(f"{work.__name__} did not raise")


def peak_mb(work: Any) -> tuple[Any, float]:
    tracemalloc.start()
    try:
        result = work()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak / 1e6


# ------------------------------------------------------------------------------ from_yaml reproducers
def test_an_impossible_date_is_text_not_a_crash() -> None:
    assert DistillConfig.from_yaml("name: 2024-02-30\n").name == "2024-02-30"
    assert DistillConfig.from_yaml("name: 2024-01-05\n").name == "2024-01-05"  # dates stay text in a cell


@pytest.mark.parametrize(
    "text",
    [
        "seed: !!timestamp foo\n",
        "steps: !!float\n",
        "seed: " + "9" * 5000 + "\n",
        "steps: !!int abc\n",
        "name: !!binary '%%%'\nsteps: !!float x\n",
    ],
    ids=["timestamp foo", "empty float", "5000 nines", "int abc", "second line"],
)
def test_values_that_cannot_be_constructed_are_config_errors_with_the_line(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_yaml(text)
    assert info.value.field == "yaml"
    assert f"line {text.count(chr(10))}" in str(info.value)
    assert len(str(info.value)) < MAX_MESSAGE


def test_control_characters_are_config_errors() -> None:
    """Found by the fuzz below: PyYAML's reader refuses them before parsing starts."""
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_yaml("\x1f: \n")
    assert info.value.field == "yaml"


@pytest.mark.parametrize("depth", [5000, 200_000])
def test_deep_brackets_are_refused_while_scanning(depth: int) -> None:
    with pytest.raises(ConfigError, match="nest deeper"):
        DistillConfig.from_yaml("dataset: " + "[" * depth + "\n")


def test_deep_block_nesting_is_refused() -> None:
    with pytest.raises(ConfigError, match="nests deeper"):
        DistillConfig.from_yaml("dataset:\n  " + "- " * 5000 + "x\n")


def test_names_with_a_trailing_newline_are_refused() -> None:
    assert RUN_NAME_PATTERN.match("run\n") is None  # also what the REST handlers check run ids with
    for text in ('name: "run\\n"\n', 'alias: "model\\n"\n'):
        with pytest.raises(ConfigError) as info:
            DistillConfig.from_yaml(text)
        assert info.value.field in ("name", "alias")


def anchor_bomb() -> str:
    """About 400 bytes that expand to 9^9 strings when walked (validation, repr, the store)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, this in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{this}: &{this} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    return "dataset:\n  " + "\n  ".join(lines) + "\nname: *i\n"


def test_an_anchor_bomb_is_refused_in_bounded_time_and_memory() -> None:
    text = anchor_bomb()
    assert len(text) < 500
    error, peak = peak_mb(lambda: error_of(DistillConfig.from_yaml, text))
    assert isinstance(error, ConfigError) and "expands to more than" in str(error) and len(str(error)) < MAX_MESSAGE
    assert peak < 20  # MB; the unbounded version built a 351 MB message


def test_an_alias_inside_itself_is_refused() -> None:
    with pytest.raises(ConfigError, match="contains it"):
        DistillConfig.from_yaml("dataset: &a [*a]\n")


def test_errors_show_a_shortened_value() -> None:
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_yaml("name: [" + ", ".join(f'"{"x" * 50}"' for _ in range(500)) + "]\n")
    assert len(str(info.value)) < MAX_MESSAGE


# ------------------------------------------------------------------------------ dataset reproducers
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv"])
def test_invalid_utf8_in_any_file_is_a_dataset_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n' if "json" in suffix else b"prompt\ncaf\xe9\n")
    with pytest.raises(DatasetError, match="not UTF-8") as info:
        load_dataset(path)
    assert path.name in str(info.value)


def test_a_csv_field_over_the_limit_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("prompt\n" + '"' + "x" * 200_000 + '"\n')
    with pytest.raises(DatasetError, match="line") as info:
        load_dataset(path)
    assert len(str(info.value)) < MAX_MESSAGE


def test_deep_nesting_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('[{"prompt": "hi", "x": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    with pytest.raises(DatasetError):
        load_dataset(path)
    nested: Any = "leaf"
    for _ in range(500):
        nested = [nested]
    with pytest.raises(DatasetError, match="nested deeper"):
        load_dataset([{"prompt": "hi", "x": nested}])


def test_a_lone_surrogate_is_a_dataset_error_and_hashing_never_raises() -> None:
    assert len(content_hash("prompt", "\ud800")) == 32
    assert content_hash("prompt", "ok") == content_hash("prompt", "ok")
    for row in ({"prompt": "a\ud800b"}, {"prompt": "ok", "expected": "\udfff"}, {"prompt": "ok", "\ud800": 1}):
        with pytest.raises(DatasetError, match="surrogate"):
            load_dataset([row])
    with pytest.raises(DatasetError, match="surrogate"):
        load_dataset([{"messages": [{"role": "user", "content": "\ud83d"}]}])


def test_a_corrupt_parquet_is_a_dataset_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd

    good = tmp_path / "good.parquet"
    pd.DataFrame({"prompt": ["a", "b"]}).to_parquet(good)
    data = good.read_bytes()
    for name, payload in [("junk", b"not parquet"), ("truncated", data[: len(data) // 2]), ("tail", data[:-9])]:
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(payload)
        with pytest.raises(DatasetError, match="parquet"):
            load_dataset(path)


def test_a_directory_named_like_a_file_is_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(DatasetError, match="not a file"):
        load_dataset(tmp_path / "x.jsonl")


def test_callables_returning_none_a_dict_or_a_callable_are_dataset_errors() -> None:
    with pytest.raises(DatasetError, match="returned None"):
        load_dataset(lambda: None)
    with pytest.raises(DatasetError, match="single dict"):  # not read as two prompts, its keys
        load_dataset(lambda: {"prompt": "hi", "expected": "x"})
    with pytest.raises(DatasetError, match="another callable"):
        load_dataset(lambda: lambda: [])


def test_a_generator_that_raises_is_a_dataset_error() -> None:
    def rows() -> Iterator[dict[str, str]]:
        yield {"prompt": "one"}
        raise RuntimeError("the database went away")

    with pytest.raises(DatasetError, match="after 1 row") as info:
        load_dataset(rows())
    assert "RuntimeError" in str(info.value)
    with pytest.raises(DatasetError, match="RuntimeError"):
        load_dataset(rows)  # a callable returning the generator


def test_a_dataframe_with_a_tuple_column_name_is_stored(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"prompt": ["a", "b"], ("x", "y"): [1, 2]})
    prompts = load_dataset(frame)
    assert prompts[0].row == {"('x', 'y')": 1}
    store = RunStore(tmp_path / "wd")
    store.create_run("r", {})
    store.put_prompts("r", prompts)  # raised TypeError (tuple keys) after the run was created
    assert [p.row for p in store.get_prompts("r")] == [{"('x', 'y')": 1}, {"('x', 'y')": 2}]


def test_shared_references_are_counted_and_bounded() -> None:
    level: Any = ["x"] * 9
    for _ in range(7):
        level = [level] * 9  # 9^8 leaves, all shared
    error, peak = peak_mb(lambda: error_of(load_dataset, [{"prompt": "hi", "x": level}]))
    assert isinstance(error, DatasetError) and "more than" in str(error)
    assert peak < 50  # MB; the unbounded walk took 1 GB


def test_small_shared_references_are_fine() -> None:
    shared = {"k": [1, 2, 3]}
    prompts = load_dataset([{"prompt": "hi", "a": shared, "b": shared}])
    assert prompts[0].row == {"a": {"k": [1, 2, 3]}, "b": {"k": [1, 2, 3]}}


# ------------------------------------------------------------------------------ property-based fuzz
FIELDS = list(DistillConfig.model_fields)
FRAGMENTS = [
    "!!timestamp ", "!!float ", "!!int ", "!!binary ", "!!set ", "!!omap ", "!!str ", "!!null ", "!!bool ",
    "&a ", "*a", "&b ", "*b", "[", "]", "{", "}", ", ", ": ", "- ", "? ", "<<: ", "|", ">", "#", "'", '"',
    "\\n", "\\ud800", "2024-02-30", "2024-01-05T10:00:00Z", "1e400", ".nan", "-.inf", "0x1F", "0o17", "9" * 60,
    "~", "null", "yes", "no", "on", "true", "é", "\t", "%YAML 1.1\n", "---\n", "...\n", "\n  ", "\n",
]  # fmt: skip
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@st.composite
def yaml_bodies(draw: st.DrawFn) -> str:
    """Cell bodies built from known keys, random keys and YAML's sharp edges."""
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        key = draw(st.sampled_from(FIELDS) | st.text(min_size=1, max_size=8))
        pieces = st.lists(
            st.sampled_from(FRAGMENTS) | st.text(max_size=6), min_size=1, max_size=draw(st.sampled_from([2, 8]))
        )
        value = "".join(draw(pieces))
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("[]{}:,-?&*!|>#'\"\\ \nab19.~%")), max_size=120))
def test_fuzz_from_yaml_on_yaml_punctuation(text: str) -> None:
    event(config_outcome(text))


@SETTINGS
@given(yaml_bodies())
def test_fuzz_from_yaml_on_settings_and_sharp_edges(text: str) -> None:
    event(config_outcome(text))


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)
)
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                      max_size=4), max_leaves=20)  # fmt: skip
LIKELY_ROW = st.builds(
    lambda prompt, extra: {"prompt": prompt, **extra},
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), min_size=1, max_size=20),
    st.dictionaries(st.text(max_size=6), VALUES, max_size=3),
)
KEYS = st.sampled_from(["prompt", "messages", "expected", "role", "content"]) | st.text(max_size=5)
ROW = LIKELY_ROW | st.dictionaries(KEYS, VALUES, max_size=4) | st.text(max_size=20) | VALUES


def wrap(kind: str, rows: list[Any]) -> Any:
    if kind == "list":
        return rows
    if kind == "generator":
        return (row for row in rows)
    if kind == "callable":
        return lambda: rows
    if kind == "raising generator":

        def gen() -> Iterator[Any]:
            yield from rows
            raise ValueError("broken source")

        return gen()
    if kind == "callable returning a row":
        return lambda: rows[0] if rows else None
    raise AssertionError(kind)


KINDS = ["list", "generator", "callable", "raising generator", "callable returning a row"]


@SETTINGS
@given(st.lists(ROW, max_size=5), st.sampled_from(KINDS))
def test_fuzz_python_datasets(rows: list[Any], kind: str) -> None:
    event(f"{kind}: {dataset_outcome(wrap(kind, rows))}")


SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"]


@st.composite
def file_bytes(draw: st.DrawFn) -> bytes:
    """Bytes close to a valid file (one row of each format) with random damage, or random bytes."""
    good = draw(
        st.sampled_from([b'{"prompt": "hi", "expected": "1"}\n', b'[{"prompt": "hi"}]', b"prompt,expected\nhi,1\n"])
    )
    damage = draw(st.binary(max_size=12))
    at = draw(st.integers(0, len(good)))
    return draw(st.sampled_from([good[:at] + damage + good[at:], damage, good + damage, good[:at]]))


@SETTINGS
@given(file_bytes(), st.sampled_from(SUFFIXES))
def test_fuzz_dataset_files(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"data{suffix}"
    path.write_bytes(data)
    event(f"{suffix}: {dataset_outcome(path)}")
