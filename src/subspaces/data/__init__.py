"""Bundled data, loaded offline (no downloads): scikit-learn's digits and code corpora.

The code corpora are the Python standard-library source, the CPython C headers, or a generated
pair of toy languages, with a byte-level tokenizer.
"""

from .digits import load_digits_split
from .text import (
    ByteTokenizer,
    TwoLanguageCorpus,
    aligned_programs,
    c_header_text,
    chunk_windows,
    python_source_text,
    sample_windows,
    two_language_corpus,
)

__all__ = [
    "ByteTokenizer",
    "TwoLanguageCorpus",
    "aligned_programs",
    "c_header_text",
    "chunk_windows",
    "load_digits_split",
    "python_source_text",
    "sample_windows",
    "two_language_corpus",
]
