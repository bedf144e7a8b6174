"""Tests of the offline code corpora, the byte tokenizer and the window helpers."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

from subspaces.data import (
    ByteTokenizer,
    c_header_text,
    chunk_windows,
    python_source_text,
    sample_windows,
    two_language_corpus,
)

HAS_HEADERS = any(Path(sysconfig.get_paths()["include"]).glob("*.h"))


def test_python_source_is_deterministic_and_bounded():
    a = python_source_text(5000)
    assert a == python_source_text(5000)
    assert 4990 <= len(a.encode()) <= 5000  # cut at the budget (a split character is dropped)
    assert python_source_text(5000, seed=3) != a  # another file order
    assert python_source_text(5000, seed=3) == python_source_text(5000, seed=3)
    # a prefix property: a smaller budget returns the start of the larger text
    assert a.startswith(python_source_text(1000)[:-4])
    assert "def " in python_source_text(50_000)


@pytest.mark.skipif(not HAS_HEADERS, reason="Python C headers not installed")
def test_c_headers_and_stdlib_pair():
    c = c_header_text(4000)
    assert "#" in c and len(c.encode()) <= 4000
    corpus = two_language_corpus(3000)
    assert corpus.names == ("python", "c")
    assert corpus.b == c_header_text(3000)
    assert corpus.a == python_source_text(3000)


def test_missing_headers_raise_a_clear_error(monkeypatch, tmp_path):
    paths = dict(sysconfig.get_paths())
    paths["include"] = str(tmp_path / "nowhere")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: paths)
    with pytest.raises(FileNotFoundError, match="generated"):
        c_header_text(100)
    # the generated pair does not need them
    assert two_language_corpus(100, source="generated").names == ("toy_python", "toy_c")


def test_generated_pair_is_aligned_and_seeded():
    g = two_language_corpus(3000, source="generated", seed=7)
    assert len(g.a.encode()) <= 3000 and len(g.b.encode()) <= 3000
    py_funcs = [line.split("(")[0][4:] for line in g.a.splitlines() if line.startswith("def ")]
    c_funcs = [line.split("(")[0][4:] for line in g.b.splitlines() if line.startswith("int ")]
    n = min(len(py_funcs), len(c_funcs)) - 1  # the last function may be cut
    assert n >= 5 and py_funcs[:n] == c_funcs[:n]
    assert ";" not in g.a and "{" not in g.a and "def " not in g.b
    assert two_language_corpus(3000, source="generated", seed=8) != g


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"max_bytes": 0}, ValueError),
        ({"max_bytes": 1.5}, TypeError),
        ({"source": "x"}, ValueError),
    ],
)
def test_corpus_validation(kwargs, err):
    with pytest.raises(err):
        two_language_corpus(**{"max_bytes": 10, **kwargs})


def test_byte_tokenizer_roundtrip_and_specials():
    tok = ByteTokenizer(specials=("<pad>", "<bos>", "<eos>"))
    assert tok.vocab_size == 259 and tok.pad_id == 256
    text = "naïve → x = 1\n"
    ids = tok.encode(text, prepend=("<bos>",), append=("<eos>",))
    assert ids.dtype == torch.long and ids[0] == 257 and ids[-1] == 258
    assert ids[1:-1].tolist() == list(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_specials=False) == "<bos>" + text + "<eos>"
    assert tok.encode(b"\xff").tolist() == [255]
    assert tok.decode([0xFF]) == "\ufffd"
    assert tok.encode("").numel() == 0
    assert ByteTokenizer(specials=()).pad_id is None
    with pytest.raises(KeyError, match="<sep>"):
        tok.encode("a", append=("<sep>",))
    with pytest.raises(ValueError, match="outside"):
        tok.decode([300])
    with pytest.raises(ValueError, match="distinct"):
        ByteTokenizer(specials=("<pad>", "<pad>"))
    with pytest.raises(TypeError):
        tok.encode(3)  # type: ignore[arg-type]


def test_pad_both_sides():
    tok = ByteTokenizer()
    seqs = [tok.encode("abc"), tok.encode("d")]
    ids, mask = tok.pad(seqs, side="right")
    assert ids.tolist() == [[97, 98, 99], [100, 256, 256]]
    assert mask.tolist() == [[True] * 3, [True, False, False]]
    ids, mask = tok.pad(seqs, side="left")
    assert ids[1].tolist() == [256, 256, 100] and mask[1].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="<pad>"):
        ByteTokenizer(specials=()).pad(seqs)
    with pytest.raises(ValueError):
        tok.pad([])


def test_windows():
    ids = torch.arange(50)
    g1 = torch.Generator().manual_seed(0)
    g2 = torch.Generator().manual_seed(0)
    w = sample_windows(ids, 16, 10, generator=g1)
    assert torch.equal(w, sample_windows(ids, 16, 10, generator=g2))
    assert w.shape == (16, 10) and int(w.max()) <= 49
    assert torch.equal(w - w[:, :1], torch.arange(10).expand(16, 10))
    # every valid start can occur, and only those
    starts = sample_windows(ids, 4000, 10, generator=g1)[:, 0]
    assert set(starts.tolist()) == set(range(41))
    c = chunk_windows(ids, 8)
    assert c.shape == (6, 8) and torch.equal(c.flatten(), torch.arange(48))
    assert chunk_windows(ids, 50).shape == (1, 50)
    with pytest.raises(ValueError, match="fewer"):
        sample_windows(ids, 2, 51)
    with pytest.raises(TypeError):
        chunk_windows(ids.float(), 4)
    with pytest.raises(ValueError):
        chunk_windows(ids.view(5, 10), 4)
