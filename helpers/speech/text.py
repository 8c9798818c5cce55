"""Text normalisation and error-rate metrics for *scoring* transcripts.

Nothing here is meant for training targets: the normaliser throws away
punctuation, casing and the Traditional/Simplified distinction so that two
transcripts are compared on what was said, not how it was written.

Units
-----
* ``char``  - every non-space character after normalisation (CER).
* ``word``  - whitespace-separated words (WER; little meaning for Chinese,
  which is written without spaces).
* ``mixed`` - one token per CJK character, one per run of Latin letters /
  digits / apostrophes (MER, the *mixed* error rate used for Mandarin-English
  code-switching). Not jiwer's "match error rate", which is also called MER.

All rates are percentages: ``100 * (S + D + I) / N`` with N reference tokens.
Empty references (after normalisation) are handled here, not by jiwer: an
empty reference has N = 0, and every predicted token counts as an insertion.
The rate then divides by ``max(N, 1)``, so an empty reference with an empty
prediction scores 0.0 and one with k predicted tokens scores ``100 * k``
(finite, unlike the mathematically undefined k / 0).
"""
from __future__ import annotations

import functools
import re
import unicodedata

import jiwer
import opencc

__all__ = ["normalize", "char_tokens", "word_tokens", "mixed_tokens", "cer", "wer",
           "mer", "error_counts", "utterance_scores", "align", "score"]

_FOLDS = ("t2s", "s2t", None)
_UNITS = ("char", "word", "mixed")

# CJK Unified Ideographs (basic + extensions A-I), compatibility ideographs, and 〇.
_CJK = ("\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
        "\U00020000-\U0002a6df\U0002a700-\U0002ee5f\U0002f800-\U0002fa1f"
        "\U00030000-\U000323af")
_LATIN = "0-9A-Za-z\u00c0-\u024f"  # ASCII letters/digits plus accented Latin letters
_SPACE_NEAR_CJK = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")
_STRAY_APOSTROPHE = re.compile(rf"(?<![{_LATIN}])'|'(?![{_LATIN}])")
_MIXED_TOKEN = re.compile(rf"[{_LATIN}]+(?:'[{_LATIN}]+)*|\S")


@functools.cache
def _converter(config: str) -> opencc.OpenCC:
    return opencc.OpenCC(config)


def _check(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed!r}, got {value!r}")


def normalize(text: str, *, fold: str | None = "t2s", lowercase: bool = True) -> str:
    """Normalise ``text`` for scoring; returns a string.

    Steps: Unicode NFKC (full-width ``ＡＢＣ１２３`` -> ``ABC123``, ideographic
    space -> space); punctuation (Unicode categories P*), symbols (S*, e.g.
    ``～ + $ °``) and control/format characters (C*) become spaces, except an
    apostrophe between Latin letters (``don't``; ``’`` is read as ``'``);
    lowercasing (if ``lowercase``); Traditional/Simplified folding through
    OpenCC (``fold="t2s"`` to Simplified, ``"s2t"`` to Traditional, ``None``
    to keep the script); whitespace collapsed to single spaces, stripped, and
    removed wherever it touches a CJK character (``"今天 下午 ok"`` ->
    ``"今天下午ok"``) - only spaces between Latin words survive.
    Numbers are not normalised: ``十點`` and ``10點`` stay different.
    Raises ValueError for a ``fold`` outside ``("t2s", "s2t", None)``.
    """
    _check(fold, _FOLDS, "fold")
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    text = "".join(" " if ch != "'" and unicodedata.category(ch)[0] in "PSC" else ch
                   for ch in text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    if lowercase:
        text = text.lower()
    if fold is not None:
        text = _converter(fold).convert(text)
    text = " ".join(text.split())
    return _SPACE_NEAR_CJK.sub("", text)


def char_tokens(text: str, **norm_kw) -> list[str]:
    """Characters of ``normalize(text, **norm_kw)`` with whitespace dropped (CER units)."""
    return [ch for ch in normalize(text, **norm_kw) if not ch.isspace()]


def word_tokens(text: str, **norm_kw) -> list[str]:
    """Whitespace-separated words of ``normalize(text, **norm_kw)`` (WER units).

    Chinese is written without spaces, so a whole Chinese clause is one "word"
    here and WER means little for it; use CER or MER for Mandarin.
    """
    return normalize(text, **norm_kw).split()


def mixed_tokens(text: str, **norm_kw) -> list[str]:
    """Tokens of ``normalize(text, **norm_kw)`` for the mixed error rate (MER).

    Each CJK character is one token; each maximal run of Latin letters, digits
    and inner apostrophes is one token (``email``, ``don't``, ``ppt2``); any
    other non-space character (kana, bopomofo, ...) is a token of its own.
    ``"明天的meeting改到十點"`` -> ``[明, 天, 的, meeting, 改, 到, 十, 点]`` (t2s fold).
    """
    return _MIXED_TOKEN.findall(normalize(text, **norm_kw))


_TOKENIZERS = {"char": char_tokens, "word": word_tokens, "mixed": mixed_tokens}
_OP_KEYS = {"equal": "hits", "substitute": "substitutions", "delete": "deletions"}


def _pairs(references, predictions):
    """Accept a single string pair or two equal-length lists of strings."""
    refs = [references] if isinstance(references, str) else list(references)
    preds = [predictions] if isinstance(predictions, str) else list(predictions)
    if len(refs) != len(preds):
        raise ValueError(f"references and predictions differ in length: "
                         f"{len(refs)} references vs {len(preds)} predictions")
    return refs, preds


def _utterance_counts(references, predictions, unit, norm_kw):
    """Per-utterance dicts of substitutions/deletions/insertions/hits/n_ref.

    Token lists are joined by spaces and aligned by one jiwer.process_words
    call; utterances whose reference is empty are counted here instead.
    """
    _check(unit, _UNITS, "unit")
    tokenize = _TOKENIZERS[unit]
    refs, preds = _pairs(references, predictions)
    ref_toks = [tokenize(r, **norm_kw) for r in refs]
    pred_toks = [tokenize(p, **norm_kw) for p in preds]
    counts = [dict(substitutions=0, deletions=0, insertions=len(p), hits=0, n_ref=0)
              for p in pred_toks]
    scored = [i for i, r in enumerate(ref_toks) if r]
    if scored:
        out = jiwer.process_words([" ".join(ref_toks[i]) for i in scored],
                                  [" ".join(pred_toks[i]) for i in scored])
        for i, chunks in zip(scored, out.alignments):
            c = dict(substitutions=0, deletions=0, insertions=0, hits=0,
                     n_ref=len(ref_toks[i]))
            for ch in chunks:  # a chunk may span several tokens
                if ch.type == "insert":
                    c["insertions"] += ch.hyp_end_idx - ch.hyp_start_idx
                else:
                    c[_OP_KEYS[ch.type]] += ch.ref_end_idx - ch.ref_start_idx
            counts[i] = c
    return counts


def _rate(c) -> float:
    return 100.0 * (c["substitutions"] + c["deletions"] + c["insertions"]) / max(c["n_ref"], 1)


def error_counts(references, predictions, unit: str = "char", **norm_kw) -> dict:
    """Corpus totals for ``unit`` in ``("char", "word", "mixed")``.

    ``references`` / ``predictions``: equal-length lists of strings, or one
    string each. ``norm_kw`` goes to :func:`normalize`. Returns a dict with
    integer ``substitutions``, ``deletions``, ``insertions``, ``hits`` and
    ``n_ref`` (reference tokens). Raises ValueError on a bad unit or lengths.
    """
    counts = _utterance_counts(references, predictions, unit, norm_kw)
    keys = ("substitutions", "deletions", "insertions", "hits", "n_ref")
    return {k: sum(c[k] for c in counts) for k in keys}


def cer(references, predictions, **norm_kw) -> float:
    """Corpus character error rate in percent: total char edits / total reference chars.

    Not the mean of utterance rates: long utterances weigh more. See the
    module docstring for empty references (rate divides by ``max(N, 1)``).
    """
    return _rate(error_counts(references, predictions, "char", **norm_kw))


def wer(references, predictions, **norm_kw) -> float:
    """Corpus word error rate in percent (whitespace words; see :func:`word_tokens`)."""
    return _rate(error_counts(references, predictions, "word", **norm_kw))


def mer(references, predictions, **norm_kw) -> float:
    """Corpus mixed error rate in percent (CJK chars + Latin words; see :func:`mixed_tokens`).

    This is the code-switching MER, not jiwer's match error rate.
    """
    return _rate(error_counts(references, predictions, "mixed", **norm_kw))


def score(references, predictions, fold: str | None = "t2s") -> dict:
    """Corpus ``cer``, ``wer`` and ``mer`` in percent, and ``exact_match``: the share (%) of utterances whose
    normalised prediction equals the normalised reference."""
    refs, preds = _pairs(references, predictions)
    exact = sum(normalize(r, fold=fold) == normalize(p, fold=fold) for r, p in zip(refs, preds))
    return {"cer": cer(refs, preds, fold=fold), "wer": wer(refs, preds, fold=fold),
            "mer": mer(refs, preds, fold=fold), "exact_match": 100.0 * exact / max(len(refs), 1)}


def utterance_scores(references, predictions, **norm_kw) -> list[dict]:
    """One dict per utterance, ready for ``pandas.DataFrame``.

    Keys: ``ref_norm`` / ``pred_norm`` (the normalised strings that were
    scored); ``cer``, ``wer``, ``mer`` (percent, ``100 * edits / max(N, 1)``,
    so an empty reference with k predicted tokens gives ``100 * k``); and for
    each unit ``u`` in char/word/mixed the counts ``u_sub``, ``u_del``,
    ``u_ins`` and ``u_n_ref``.
    """
    refs, preds = _pairs(references, predictions)
    rows = [{"ref_norm": normalize(r, **norm_kw), "pred_norm": normalize(p, **norm_kw)}
            for r, p in zip(refs, preds)]
    for unit, rate_key in (("char", "cer"), ("word", "wer"), ("mixed", "mer")):
        counts = _utterance_counts(refs, preds, unit, norm_kw)
        for row, c in zip(rows, counts):
            row[rate_key] = _rate(c)
            row.update({f"{unit}_sub": c["substitutions"], f"{unit}_del": c["deletions"],
                        f"{unit}_ins": c["insertions"], f"{unit}_n_ref": c["n_ref"]})
    return rows


def align(reference: str, prediction: str, unit: str = "char",
          **norm_kw) -> list[tuple[str, str | None, str | None]]:
    """Token-by-token alignment of one normalised reference/prediction pair.

    Returns ``(op, ref_token, pred_token)`` tuples in order, with ``op`` one of
    ``"equal"``, ``"substitute"``, ``"delete"`` (pred_token None) or
    ``"insert"`` (ref_token None); tokens are those of ``unit`` (``"char"``,
    ``"mixed"`` or ``"word"``) after normalisation, so with the default t2s
    fold they are Simplified. Built from jiwer's alignment chunks.
    """
    _check(unit, _UNITS, "unit")
    ref = _TOKENIZERS[unit](reference, **norm_kw)
    pred = _TOKENIZERS[unit](prediction, **norm_kw)
    if not ref:
        return [("insert", None, p) for p in pred]
    chunks = jiwer.process_words(" ".join(ref), " ".join(pred)).alignments[0]
    pairs = []
    for ch in chunks:
        r = ref[ch.ref_start_idx:ch.ref_end_idx]
        p = pred[ch.hyp_start_idx:ch.hyp_end_idx]
        if ch.type == "delete":
            pairs += [("delete", t, None) for t in r]
        elif ch.type == "insert":
            pairs += [("insert", None, t) for t in p]
        else:  # equal / substitute chunks have equal lengths on both sides
            pairs += [(ch.type, a, b) for a, b in zip(r, p)]
    return pairs
