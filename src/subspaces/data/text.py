"""Offline text corpora and a byte-level tokenizer for tiny language models.

Two "languages" of code are available without any download:

- :func:`python_source_text`: the Python standard library's own ``.py`` source files;
- :func:`c_header_text`: the C headers that ship with CPython (``Python.h`` and friends), present
  when the Python development headers are installed;
- :func:`two_language_corpus` returns the pair, or (``source="generated"``) a pair of toy
  languages synthesized deterministically from a seed (a Python-like and a C-like one), so that a
  reproduction never depends on the headers being installed.

:class:`ByteTokenizer` maps text to bytes (vocabulary 256 plus optional special tokens), and
:func:`sample_windows` / :func:`chunk_windows` cut token streams into ``(batch, seq)`` windows.
These feed the steering reproductions (G-ACT, Sharma & Raman, arXiv 2506.18887, steer code
generation between programming languages) and the optimizer benchmarks.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_int

__all__ = [
    "ByteTokenizer",
    "TwoLanguageCorpus",
    "aligned_programs",
    "c_header_text",
    "chunk_windows",
    "python_source_text",
    "sample_windows",
    "two_language_corpus",
]

_SEPARATOR = "\n\n"


def _sorted_files(root: Path, suffix: str, exclude_dirs: frozenset[str]) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude_dirs)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(suffix))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _concatenate(files: list[Path], max_bytes: int, seed: int) -> str:
    """Concatenate files (order: sorted, then permuted by ``seed`` unless 0) up to ``max_bytes``."""
    if seed != 0:
        perm = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
        files = [files[int(i)] for i in perm]
    parts: list[bytes] = []
    used = 0
    sep = _SEPARATOR.encode()
    for path in files:
        try:
            data = path.read_bytes().decode("utf-8", errors="replace").encode("utf-8")
        except OSError:  # pragma: no cover - unreadable file in a system directory
            continue
        if not data.strip():
            continue
        if parts:
            data = sep + data
        room = max_bytes - used
        if len(data) >= room:
            parts.append(data[:room])
            used = max_bytes
            break
        parts.append(data)
        used += len(data)
    # A cut may split a multi-byte character: drop the partial character.
    return b"".join(parts).decode("utf-8", errors="ignore")


def _check_max_bytes(max_bytes: int) -> int:
    return check_positive_int(max_bytes, "max_bytes")


def python_source_text(max_bytes: int = 1_000_000, seed: int = 0) -> str:
    """Concatenated source of the Python standard library's ``.py`` files.

    Files are found under ``sysconfig.get_paths()['stdlib']`` (``site-packages`` excluded), sorted
    by relative path; ``seed=0`` keeps that order, another seed permutes it deterministically
    (so different seeds give different excerpts). Files are joined by a blank line and the text
    is cut at ``max_bytes`` UTF-8 bytes.

    Args:
        max_bytes: the most UTF-8 bytes of text to return (positive).
        seed: ``0`` for sorted order, otherwise the seed of a file permutation.

    Returns:
        The text (at most ``max_bytes`` bytes once UTF-8 encoded).

    Raises:
        ValueError: if ``max_bytes`` is not positive.
        TypeError: if ``max_bytes`` is not an int.
        FileNotFoundError: if the standard library source cannot be found.

    Example:
        >>> text = python_source_text(2000)
        >>> 0 < len(text.encode()) <= 2000
        True
        >>> python_source_text(500) == python_source_text(500)
        True
    """
    max_bytes = _check_max_bytes(max_bytes)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = (
        _sorted_files(root, ".py", frozenset({"site-packages", "dist-packages", "__pycache__"}))
        if root.is_dir()
        else []
    )
    if not files:
        raise FileNotFoundError(f"no Python standard-library .py files found under {root}")
    return _concatenate(files, max_bytes, seed)


def c_header_text(max_bytes: int = 1_000_000, seed: int = 0) -> str:
    """Concatenated C headers that ship with CPython (``sysconfig.get_paths()['include']``).

    Same ordering and cutting rules as :func:`python_source_text`. The headers come with the
    Python development package; where they are missing use
    ``two_language_corpus(source="generated")``.

    Args:
        max_bytes: the most UTF-8 bytes of text to return (positive).
        seed: ``0`` for sorted order, otherwise the seed of a file permutation.

    Returns:
        The text (at most ``max_bytes`` bytes once UTF-8 encoded).

    Raises:
        ValueError: if ``max_bytes`` is not positive.
        TypeError: if ``max_bytes`` is not an int.
        FileNotFoundError: if the Python C headers are not installed.

    Example:
        >>> try:
        ...     text = c_header_text(2000)
        ... except FileNotFoundError:  # headers not installed
        ...     text = "#include"
        >>> "#" in text
        True
    """
    max_bytes = _check_max_bytes(max_bytes)
    root = Path(sysconfig.get_paths()["include"])
    files = _sorted_files(root, ".h", frozenset({"__pycache__"})) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"the Python C headers are not installed (no .h files under {root}); install the "
            "Python development headers (e.g. python3-dev) or use "
            "two_language_corpus(source='generated')"
        )
    return _concatenate(files, max_bytes, seed)


# --------------------------------------------------------------------------------------------
# Two synthetic languages: the same small programs written in a Python-like and a C-like syntax.
# --------------------------------------------------------------------------------------------

_NAMES = (
    *("count", "total", "value", "index", "size", "left", "right", "node", "item", "key"),
    *("data", "result", "buffer", "offset", "limit", "step", "width", "height", "score"),
    *("state", "flag", "first", "last", "head", "tail", "acc"),
)
_FUNCS = (
    *("compute", "update", "check", "merge", "scan", "reduce", "apply", "parse", "build"),
    *("find", "clamp", "shift", "mix"),
)
_OPS = ("+", "-", "*")
_CMPS = ("<", ">", "==", "!=")


class _Rng:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.gen))

    def choice(self, seq: Sequence[str]) -> str:
        return seq[self.randint(len(seq))]


def _expr(rng: _Rng, names: list[str]) -> str:
    a = rng.choice(names)
    if rng.randint(2):
        return f"{a} {rng.choice(_OPS)} {rng.randint(100)}"
    return f"{a} {rng.choice(_OPS)} {rng.choice(names)}"


def _program_chunks(rng: _Rng) -> list[tuple[str, str]]:
    """One random function as aligned chunks ``(python-like, C-like)``, one per statement."""
    fname = f"{rng.choice(_FUNCS)}_{rng.choice(_NAMES)}"
    args = [rng.choice(_NAMES) for _ in range(1 + rng.randint(3))]
    args = list(dict.fromkeys(args))
    local = rng.choice(_NAMES)
    names = [*args, local]
    init = _expr(rng, args)
    chunks = [
        (
            f"def {fname}({', '.join(args)}):\n",
            f"int {fname}({', '.join('int ' + a for a in args)}) {{\n",
        ),
        (f"    {local} = {init}\n", f"    int {local} = {init};\n"),
    ]
    for _ in range(1 + rng.randint(3)):
        kind = rng.randint(3)
        target = rng.choice(names)
        if kind == 0:
            e = _expr(rng, names)
            chunks.append((f"    {target} = {e}\n", f"    {target} = {e};\n"))
        elif kind == 1:
            cond = f"{rng.choice(names)} {rng.choice(_CMPS)} {rng.randint(50)}"
            e = _expr(rng, names)
            chunks.append(
                (
                    f"    if {cond}:\n        {target} = {e}\n",
                    f"    if ({cond}) {{\n        {target} = {e};\n    }}\n",
                )
            )
        else:
            i = rng.choice(("i", "j", "k"))
            n = rng.randint(20) + 1
            e = _expr(rng, [*names, i])
            chunks.append(
                (
                    f"    for {i} in range({n}):\n        {target} = {e}\n",
                    f"    for (int {i} = 0; {i} < {n}; {i}++) {{\n"
                    f"        {target} = {e};\n    }}\n",
                )
            )
    ret = _expr(rng, names)
    chunks.append((f"    return {ret}\n", f"    return {ret};\n}}\n"))
    return chunks


def _program(rng: _Rng) -> tuple[str, str]:
    """One random function, rendered in both toy languages."""
    chunks = _program_chunks(rng)
    return "".join(c[0] for c in chunks), "".join(c[1] for c in chunks)


def aligned_programs(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """``n`` random toy functions, each a list of aligned ``(python-like, C-like)`` chunks.

    Chunk ``j`` of a program is the same statement in both toy languages of
    ``two_language_corpus(source="generated")`` (signature, one statement or block, return);
    joining a program's chunks gives its text in either language. Aligned chunks give
    contrastive pairs at every statement boundary.

    Args:
        n: number of programs.
        seed: generator seed (``seed`` gives the same programs as the generated corpus).

    Returns:
        A list of programs, each a list of ``(python_chunk, c_chunk)``.

    Raises:
        ValueError: if ``n`` is not positive.
        TypeError: if ``n`` is not an int.

    Example:
        >>> prog = aligned_programs(1, seed=1)[0]
        >>> corpus = two_language_corpus(2000, source="generated", seed=1)
        >>> corpus.a.startswith("".join(p for p, _ in prog))
        True
        >>> corpus.b.startswith("".join(c for _, c in prog))
        True
    """
    n = check_positive_int(n, "n")
    rng = _Rng(seed)
    return [_program_chunks(rng) for _ in range(n)]


def _generated_pair(max_bytes: int, seed: int) -> tuple[str, str]:
    rng = _Rng(seed)
    py_parts: list[str] = []
    c_parts: list[str] = []
    py_len = c_len = 0
    while py_len < max_bytes or c_len < max_bytes:
        py, c = _program(rng)
        if py_len < max_bytes:
            py_parts.append(py)
            py_len += len(py) + 1
        if c_len < max_bytes:
            c_parts.append(c)
            c_len += len(c) + 1
    return "\n".join(py_parts)[:max_bytes], "\n".join(c_parts)[:max_bytes]


class TwoLanguageCorpus(NamedTuple):
    """Two corpora of code in different languages.

    Attributes:
        a: text of the first language (Python source, or the Python-like toy language).
        b: text of the second language (C headers, or the C-like toy language).
        names: the two languages' names, e.g. ``("python", "c")``.

    Example:
        >>> python, c, names = two_language_corpus(300, source="generated", seed=0)
        >>> names, len(python.encode()), len(c.encode())
        (('toy_python', 'toy_c'), 300, 300)
        >>> print(python.splitlines()[0])  # program 0 in both languages
        def merge_step(width, acc, height):
        >>> print(c.splitlines()[0])
        int merge_step(int width, int acc, int height) {
    """

    a: str
    b: str
    names: tuple[str, str]


def two_language_corpus(
    max_bytes: int = 500_000, *, source: str = "stdlib", seed: int = 0
) -> TwoLanguageCorpus:
    """A two-language code corpus available offline.

    ``source="stdlib"``: Python standard-library source vs the CPython C headers (names
    ``("python", "c")``); raises if the headers are missing. ``source="generated"``: the same
    random small functions written in a Python-like and in a C-like toy syntax (names
    ``("toy_python", "toy_c")``), deterministic in ``seed`` and independent of the installation.
    The generated pair is aligned (program ``i`` of one language is program ``i`` of the other),
    which makes it a natural source of contrastive prompt pairs.

    Args:
        max_bytes: the most UTF-8 bytes per language (positive).
        source: ``"stdlib"`` or ``"generated"``.
        seed: file-order seed (stdlib) or generator seed (generated).

    Returns:
        A :class:`TwoLanguageCorpus` ``(a, b, names)``.

    Raises:
        ValueError: for an unknown ``source`` or a non-positive ``max_bytes``.
        FileNotFoundError: for ``source="stdlib"`` without the C headers.

    Example:
        >>> corpus = two_language_corpus(400, source="generated", seed=1)
        >>> corpus.names
        ('toy_python', 'toy_c')
        >>> corpus.a.startswith("def "), "{" in corpus.b
        (True, True)
        >>> corpus == two_language_corpus(400, source="generated", seed=1)
        True
    """
    max_bytes = _check_max_bytes(max_bytes)
    check_choice(source, "source", ("stdlib", "generated"))
    if source == "generated":
        a, b = _generated_pair(max_bytes, seed)
        return TwoLanguageCorpus(a, b, ("toy_python", "toy_c"))
    b = c_header_text(max_bytes, seed)
    a = python_source_text(max_bytes, seed)
    return TwoLanguageCorpus(a, b, ("python", "c"))


# --------------------------------------------------------------------------------------------
# Tokenizer and windows
# --------------------------------------------------------------------------------------------


class ByteTokenizer:
    """Byte-level tokenizer: ids ``0..255`` are UTF-8 bytes, then the special tokens.

    Args:
        specials: names of special tokens, given ids ``256, 257, ...`` in order (names must be
            distinct). ``"<pad>"`` among them defines :attr:`pad_id`.

    Raises:
        ValueError: if ``specials`` repeats a name.
        TypeError: if a special name is not a string.

    Example:
        >>> tok = ByteTokenizer(specials=("<pad>", "<bos>"))
        >>> tok.vocab_size, tok.pad_id, tok.special_id("<bos>")
        (258, 256, 257)
        >>> ids = tok.encode("hé", prepend=("<bos>",))
        >>> ids.tolist()
        [257, 104, 195, 169]
        >>> tok.decode(ids)
        'hé'
        >>> batch, mask = tok.pad([tok.encode("ab"), tok.encode("c")], side="left")
        >>> batch.tolist(), mask.tolist()
        ([[97, 98], [256, 99]], [[True, True], [False, True]])
    """

    def __init__(self, specials: Sequence[str] = ("<pad>",)) -> None:
        specials = tuple(specials)
        for s in specials:
            if not isinstance(s, str):
                raise TypeError(f"special token names must be str, got {type(s).__name__}")
        if len(set(specials)) != len(specials):
            raise ValueError(f"specials must be distinct, got {specials}")
        self.specials = specials
        self._ids = {name: 256 + i for i, name in enumerate(specials)}

    def __repr__(self) -> str:
        return f"ByteTokenizer(specials={self.specials!r})"

    @property
    def vocab_size(self) -> int:
        """Number of token ids: 256 bytes plus the specials."""
        return 256 + len(self.specials)

    @property
    def pad_id(self) -> int | None:
        """Id of ``"<pad>"``, or ``None`` when it is not among the specials."""
        return self._ids.get("<pad>")

    def special_id(self, name: str) -> int:
        """Id of the special token ``name``.

        Args:
            name: a name given in ``specials``.

        Returns:
            Its id (``>= 256``).

        Raises:
            KeyError: if ``name`` is not a special token of this tokenizer.
        """
        try:
            return self._ids[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not a special token of this tokenizer (specials: {self.specials})"
            ) from None

    def encode(
        self, text: str | bytes, *, prepend: Sequence[str] = (), append: Sequence[str] = ()
    ) -> Tensor:
        """Token ids of ``text`` (its UTF-8 bytes), with optional special tokens around it.

        Args:
            text: a string (UTF-8 encoded) or raw bytes.
            prepend: names of special tokens to put first.
            append: names of special tokens to put last.

        Returns:
            A 1-D ``torch.long`` tensor.

        Raises:
            TypeError: if ``text`` is neither ``str`` nor ``bytes``.
        """
        if isinstance(text, str):
            data = text.encode("utf-8")
        elif isinstance(text, (bytes, bytearray)):
            data = bytes(text)
        else:
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        body = torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else None
        pre = torch.tensor([self.special_id(n) for n in prepend], dtype=torch.long)
        post = torch.tensor([self.special_id(n) for n in append], dtype=torch.long)
        parts = [pre] + ([body] if body is not None else []) + [post]
        return torch.cat(parts)

    def decode(self, ids: Tensor | Sequence[int], *, skip_specials: bool = True) -> str:
        """Text of token ids (invalid UTF-8 replaced by U+FFFD).

        Args:
            ids: 1-D ids.
            skip_specials: drop special tokens; otherwise they appear as their names.

        Returns:
            The decoded string.

        Raises:
            ValueError: for an id outside ``[0, vocab_size)`` or ids that are not 1-D.
        """
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if values and isinstance(values[0], list):
            raise ValueError("decode expects 1-D ids; decode each row of a batch separately")
        out: list[str] = []
        buf = bytearray()
        for value in values:
            v = int(value)
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"token id {v} is outside [0, {self.vocab_size})")
            if v < 256:
                buf.append(v)
                continue
            if not skip_specials:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(self.specials[v - 256])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def pad(self, sequences: Sequence[Tensor], *, side: str = "right") -> tuple[Tensor, Tensor]:
        """Pad 1-D id tensors into a batch.

        Args:
            sequences: non-empty 1-D long tensors.
            side: ``"right"`` or ``"left"`` padding.

        Returns:
            ``(input_ids, attention_mask)``, both ``(batch, max_len)``; the mask is ``True`` on
            real tokens.

        Raises:
            ValueError: without a ``"<pad>"`` special, for an empty list, an empty sequence or a
                bad ``side``.
        """
        check_choice(side, "side", ("left", "right"))
        if self.pad_id is None:
            raise ValueError("this tokenizer has no '<pad>' special token to pad with")
        if len(sequences) == 0:
            raise ValueError("sequences must not be empty")
        if any(s.ndim != 1 or s.numel() == 0 for s in sequences):
            raise ValueError("every sequence must be a non-empty 1-D tensor")
        width = max(int(s.numel()) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.bool)
        for i, s in enumerate(sequences):
            n = int(s.numel())
            sl = slice(width - n, width) if side == "left" else slice(0, n)
            ids[i, sl] = s.long()
            mask[i, sl] = True
        return ids, mask


def _check_stream(ids: Tensor, seq_len: int) -> Tensor:
    if not isinstance(ids, Tensor):
        raise TypeError(f"token ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.ndim != 1:
        raise ValueError(f"token ids must be 1-D, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"token ids must have an integer dtype, got {ids.dtype}")
    if ids.numel() < seq_len:
        raise ValueError(f"the token stream has {ids.numel()} ids, fewer than seq_len={seq_len}")
    return ids.long()


def sample_windows(
    ids: Tensor, batch_size: int, seq_len: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Random contiguous windows of a token stream (start offsets uniform, with replacement).

    Args:
        ids: a 1-D integer token stream of at least ``seq_len`` ids.
        batch_size: number of windows.
        seq_len: window length.
        generator: random source of the offsets.

    Returns:
        A ``(batch_size, seq_len)`` long tensor.

    Raises:
        ValueError: for a stream shorter than ``seq_len`` or non-positive sizes.
        TypeError: for a non-integer stream.

    Example:
        >>> w = sample_windows(torch.arange(100), 3, 5, generator=torch.Generator().manual_seed(0))
        >>> w.shape, bool(((w[:, 1:] - w[:, :-1]) == 1).all())
        (torch.Size([3, 5]), True)
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    seq_len = check_positive_int(seq_len, "seq_len")
    ids = _check_stream(ids, seq_len)
    starts = torch.randint(ids.numel() - seq_len + 1, (batch_size,), generator=generator)
    return ids[starts[:, None] + torch.arange(seq_len)]


def chunk_windows(ids: Tensor, seq_len: int, *, stride: int | None = None) -> Tensor:
    """Consecutive windows of a token stream, ``stride`` apart (non-overlapping by default).

    Args:
        ids: a 1-D integer token stream of at least ``seq_len`` ids.
        seq_len: window length.
        stride: distance between window starts (default ``seq_len``); a tail shorter than a
            window is dropped.

    Returns:
        A ``(num_windows, seq_len)`` long tensor.

    Raises:
        ValueError: for a stream shorter than ``seq_len`` or non-positive sizes.
        TypeError: for a non-integer stream.

    Example:
        >>> chunk_windows(torch.arange(7), 3).tolist()
        [[0, 1, 2], [3, 4, 5]]
        >>> chunk_windows(torch.arange(5), 3, stride=1).tolist()
        [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    """
    seq_len = check_positive_int(seq_len, "seq_len")
    stride = seq_len if stride is None else check_positive_int(stride, "stride")
    ids = _check_stream(ids, seq_len)
    return ids.unfold(0, seq_len, stride).clone()
