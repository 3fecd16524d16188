"""--data-path mistakes from the seed's FAQ get errors that name the files and the prefix to use."""

from __future__ import annotations

import pytest

from mindspeed_llm.config.flags import ArgumentError
from mindspeed_llm.training.data import check_data_prefix, parse_blend


@pytest.fixture
def dataset(tmp_path):
    for ext in ("bin", "idx"):
        (tmp_path / f"alpaca_text_document.{ext}").write_bytes(b"")
    return tmp_path


def test_prefix_with_extension_names_the_prefix(dataset):
    with pytest.raises(ArgumentError, match="without .bin/.idx: try .*alpaca_text_document$"):
        check_data_prefix(str(dataset / "alpaca_text_document.bin"))


def test_prefix_without_text_document_names_existing_files(dataset):
    with pytest.raises(ArgumentError) as err:
        check_data_prefix(str(dataset / "alpaca"))
    message = str(err.value)
    assert "alpaca_text_document.{bin,idx}" in message
    assert f"--data-path {dataset / 'alpaca_text_document'}" in message
    assert "_text_document" in message


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ArgumentError, match="does not exist"):
        check_data_prefix(str(tmp_path / "nowhere" / "x_text_document"))


def test_blend_weights_and_prefixes(dataset):
    p = str(dataset / "alpaca_text_document")
    assert parse_blend([p]) == ([p], None)
    prefixes, weights = parse_blend(["0.3", p, "0.7", p])
    assert prefixes == [p, p] and weights == pytest.approx([0.3, 0.7])
