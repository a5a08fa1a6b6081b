"""The corpus builder: parsing, determinism, order independence, tokeniser round trip."""
import sys
from pathlib import Path

# experiments/sigma_exp is a plain source package (not installed): import it from the tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import json

from sigma_exp import corpus

DUMP = """Package: a
Version: 1
Description: GNU C library  (docs)
Description-md5: 0123

Package: b
Description: Tool for X
 long description line that is ignored
Package: c
Description: Tool for X
Package: d
Description: single
Package: e
Description: Perl module for entropy management
Package: f
Description: Python 3 bindings for libfoo, version 2.0
"""


def test_descriptions_first_lines_only():
    assert corpus.descriptions(DUMP) == [
        "GNU C library (docs)", "Tool for X", "Tool for X", "single",
        "Perl module for entropy management", "Python 3 bindings for libfoo, version 2.0"]


def test_build_is_deterministic_unique_and_order_independent():
    a = corpus.build_corpus(DUMP, seed=3)
    assert a == corpus.build_corpus(DUMP, seed=3)
    assert len(a) == len(set(a)) == 4                 # duplicate and 1-word entries dropped
    assert "single" not in a
    shuffled = "\n".join(reversed(DUMP.splitlines()))
    assert corpus.build_corpus(shuffled, seed=3) == a
    assert sorted(corpus.build_corpus(DUMP, seed=4)) == sorted(a)


def test_split_and_write(tmp_path):
    docs = corpus.build_corpus(DUMP, seed=0)
    parts = corpus.split(docs, 1, 1)
    assert parts["probe"] == docs[:1] and parts["heldout"] == docs[1:2] and parts["train"] == docs[2:]
    obj = corpus.write_corpus(tmp_path, seed=0, n_probe=1, n_heldout=1, text=DUMP)
    assert obj["sha256"] == corpus.digest(docs) and obj["n_docs"] == 4
    # a second call keeps the stored corpus (resume), whatever the text now is
    again = corpus.write_corpus(tmp_path, seed=0, n_probe=1, n_heldout=1, text="")
    assert again == json.loads((tmp_path / "corpus.json").read_text()) == obj


def test_tokenize_round_trip():
    toks = corpus.tokenize("GNU C library (docs), v2.0 for x86_64")
    assert toks == ["GNU", "C", "library", "(", "docs", ")", ",", "v2.0", "for", "x86_64"]
    assert corpus.detokenize(toks) == "GNU C library (docs), v2.0 for x86_64"
