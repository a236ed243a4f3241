"""Resource names: the id of a well-formed name, INVALID_ARGUMENT naming the field otherwise."""

from __future__ import annotations

import tracemalloc

import pytest

from trainwire.server.errors import InvalidArgument
from trainwire.server.names import check_text, parse_name

ID = "0123456789abcdef0123456789abcdef"


def test_a_well_formed_name_gives_its_id_every_time() -> None:
    assert parse_name(f"jobs/{ID}", "jobs", "job") == ID
    assert parse_name(f"jobs/{ID}", "jobs", "job") == ID  # remembered, same answer
    assert parse_name(f"datasets/{ID}", "datasets", "name") == ID


@pytest.mark.parametrize(
    "name",
    [
        f"datasets/{ID}",  # another collection
        f"jobs/{ID}\n",  # a trailing newline is not part of a name
        f"jobs/{ID.upper()}",
        f"jobs/{ID[:-1]}",
        f"jobs/{ID}0",
        f"/jobs/{ID}",
        "jobs/",
    ],
)
def test_a_malformed_name_is_refused_naming_the_field(name: str) -> None:
    for _ in range(2):  # a refusal is not remembered as an answer
        with pytest.raises(InvalidArgument) as refused:
            parse_name(name, "jobs", "job")
        assert refused.value.violations[0].field == "job"
        assert "32 hex digits" in refused.value.message


def test_an_empty_name_is_called_required() -> None:
    with pytest.raises(InvalidArgument, match="required"):
        parse_name("", "jobs", "job")


def test_refused_long_names_are_not_kept() -> None:
    """A malformed name is refused without being remembered: forged multi-megabyte names, each
    kept by the cache, raised a server's memory by 800 MB in 200 calls."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(16):
            forged = f"jobs/{index:x}" + "0" * (1 << 20)  # 1 MiB, distinct each time
            with pytest.raises(InvalidArgument):
                parse_name(forged, "jobs", "job")
            del forged
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1 << 20, f"{after - before} bytes still held after 16 MiB of names"


@pytest.mark.parametrize(
    "character",
    ["\x00", "\t", "\n", "\r", "\x07", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9b", "\x9f"],
)
def test_text_holding_a_control_character_is_refused_naming_it_and_where(character: str) -> None:
    """ESC, CR and the others reached every user's terminal raw, through the CLI's listings."""
    with pytest.raises(InvalidArgument) as refused:
        check_text("header.display_name", f"ok{character}rest{character}", 256)
    assert refused.value.violations[0].field == "header.display_name"
    assert f"Received: U+{ord(character):04X} at position 2 (from 0)" in refused.value.message
    assert character not in refused.value.message


@pytest.mark.parametrize("text", ["", "iris v2", "café", "数据集", "naïve (β=0.5) 🙂", "\xa0", "~"])
def test_printable_text_of_any_script_is_accepted(text: str) -> None:
    check_text("display_name", text, 256)
