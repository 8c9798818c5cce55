"""The teacher's next-token distributions on the pseudo-labels, stored once: distillation without the teacher.

The teacher is frozen, so the soft targets of the KL term are the same at every epoch. Notebook 03 computes them once
(:func:`write_targets`: a teacher decoder pass over each kept transcript, on the cached encoder outputs when there
are some) and stores a compact form per label token; notebook 05 then trains the student alone
(:func:`kl_from_targets`). Two compact forms of a distribution ``p`` over the vocabulary (softened by the
temperature T), each ``k`` token ids (int32) with their log-probabilities (fp16):

* ``topk``: the ``k`` most likely tokens. The KL is computed against ``p`` renormalised over them: exact when ``k``
  covers the vocabulary, otherwise biased (the tail's mass is dropped), usually little since a distilled teacher is
  sharp.
* ``sampled``: ``k`` tokens drawn from ``p`` (with replacement). ``mean_j(log p(x_j) - log q(x_j))`` is an unbiased
  estimate of KL(p || q) (a Monte-Carlo average of its integrand under ``p``), noisier than ``topk``.

Files (``targets_<method>/`` beside the encoder cache): ``ids.npy`` and ``logprobs.npy`` of ``tokens x k``, read
memory-mapped, and ``targets.json`` tying each row (its audio key) to its first token and length, with the teacher's
fingerprint, the temperature, ``k``, the method and the tokenizer's fingerprint: a mismatch is refused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..files import write_json
from ..speech.audio import log_mel, read_row
from ..speech.manifest import row_keys

METHODS = ("topk", "sampled")
META = "targets.json"


# ---------------------------------------------------------------------------------------------
# Compact distributions and the KL they give
# ---------------------------------------------------------------------------------------------
def compact(logits: torch.Tensor, k: int, temperature: float, method: str,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, logprobs)`` of shape ``[..., k]`` for the distributions ``softmax(logits / temperature)``: the top
    ``k`` tokens (``method="topk"``) or ``k`` tokens drawn from it (``"sampled"``, with replacement), and the
    log-probability of each under the full softened distribution."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 < k <= logits.shape[-1]:
        raise ValueError(f"k must be between 1 and the vocabulary size {logits.shape[-1]}, got {k}")
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    if method == "topk":
        values, ids = logp.topk(k, dim=-1)
        return ids, values
    flat = logp.reshape(-1, logp.shape[-1])
    ids = torch.multinomial(flat.exp(), k, replacement=True, generator=generator).reshape(*logp.shape[:-1], k)
    return ids, logp.gather(-1, ids)


def kl_from_targets(student_logits: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor,
                    method: str, temperature: float) -> torch.Tensor:
    """The KD term ``KL(p_teacher/T || q_student/T) * T^2`` averaged over the positions where ``mask`` is true, from
    stored targets (``ids``, ``logprobs``: ``[batch, length, k]``) instead of the teacher's logits.

    ``topk``: ``sum_i p~_i (log p~_i - log q_i)`` with ``p~`` the teacher renormalised over its top ``k``;
    ``sampled``: ``mean_j (log p(x_j) - log q(x_j))`` over the ``k`` draws (unbiased for the full KL).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, ids.long())[mask]
    logprobs = logprobs.float()[mask]
    if method == "topk":
        renormalised = F.log_softmax(logprobs, dim=-1)
        kl = (renormalised.exp() * (renormalised - log_q)).sum(-1)
    elif method == "sampled":
        kl = (logprobs - log_q).mean(-1)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return kl.mean() * temperature ** 2


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------
def model_fingerprint(model) -> str:
    """SHA-256 (16 hex digits) over a model's parameter names, shapes and fp16 values: which teacher made targets."""
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(param.detach().to("cpu", torch.float16).numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 (16 hex digits) of a tokenizer's vocabulary (token -> id): targets are token ids of this one."""
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def target_bytes(tokens: int, k: int) -> int:
    """Disk bytes of the targets of ``tokens`` label tokens: ``k`` int32 ids and ``k`` fp16 log-probabilities each."""
    return tokens * k * (4 + 2)


# ---------------------------------------------------------------------------------------------
# Writing (notebook 03) and reading (notebook 05)
# ---------------------------------------------------------------------------------------------
def label_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """The token ids the student learns for each text, as the distillation collator makes them: the tokenizer's
    prefix (language, task...) + text + end-of-text, the leading start-of-transcript removed."""
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    return [ids[1:] if ids and ids[0] == start else ids for ids in tokenizer(list(texts)).input_ids]


@torch.no_grad()
def write_targets(teacher, rows: pd.DataFrame, out_dir: str | Path, k: int, temperature: float, method: str,
                  encoder_outputs=None, batch_size: int = 16, seed: int = 0, progress: bool = True,
                  chunk: int = 64) -> dict:
    """Store the teacher's compact next-token distributions (:func:`compact`) at every label position of every row
    (its ``text`` is the pseudo-label) in ``out_dir``; returns the metadata written to ``targets.json``.

    The teacher reads the encoder outputs of ``encoder_outputs`` (``(array, index)`` as
    ``encoder_cache.open_encoder_cache`` returns them for ``rows``) or, without them, runs its encoder on the audio.
    The vocabulary projection runs ``chunk`` positions at a time, so memory stays at ``batch x chunk x vocabulary``;
    ``seed`` fixes the draws of ``sampled``.
    """
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    model, tokenizer = teacher.model.eval(), teacher.tokenizer
    labels = label_ids(tokenizer, rows["text"].tolist())
    lengths = np.array([len(ids) for ids in labels])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META).unlink(missing_ok=True)  # an older store stops being valid now
    ids_out = open_memmap(out_dir / "ids.npy", mode="w+", dtype=np.int32, shape=(int(lengths.sum()), k))
    logp_out = open_memmap(out_dir / "logprobs.npy", mode="w+", dtype=np.float16, shape=(int(lengths.sum()), k))
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    generator = torch.Generator(device=device).manual_seed(seed)
    start_id = model.config.decoder_start_token_id
    records = rows.to_dict("records")
    for first in tqdm(range(0, len(rows), batch_size), desc=f"teacher targets ({method})", disable=not progress):
        batch = range(first, min(first + batch_size, len(rows)))
        if encoder_outputs is not None:
            cache, index = encoder_outputs
            hidden = torch.from_numpy(np.stack([cache[index[i]] for i in batch])).to(device, dtype)
        else:
            features = log_mel(teacher.feature_extractor, [read_row(records[i]) for i in batch], device, dtype)
            hidden = model.model.encoder(features).last_hidden_state
        width = max(lengths[i] for i in batch)
        inputs = torch.full((len(batch), width), start_id, dtype=torch.long, device=device)
        for row, i in enumerate(batch):  # decoder input: start of transcript + the labels but the last
            inputs[row, 1:lengths[i]] = torch.tensor(labels[i][:-1], device=device)
        decoded = model.model.decoder(input_ids=inputs, encoder_hidden_states=hidden).last_hidden_state
        for at in range(0, width, chunk):  # the vocabulary projection a few positions at a time: bounded memory
            ids, logprobs = compact(model.proj_out(decoded[:, at:at + chunk]), k, temperature, method, generator)
            for row, i in enumerate(batch):
                end = min(lengths[i], at + chunk)
                if end > at:
                    ids_out[offsets[i] + at:offsets[i] + end] = ids[row, :end - at].cpu().numpy()
                    logp_out[offsets[i] + at:offsets[i] + end] = logprobs[row, :end - at].cpu().numpy()
    ids_out.flush()
    logp_out.flush()
    meta = {"method": method, "k": k, "temperature": temperature, "teacher_fingerprint": model_fingerprint(model),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "tokens": int(lengths.sum()),
            "bytes": target_bytes(int(lengths.sum()), k), "rows": row_keys(rows), "offsets": offsets.tolist(),
            "lengths": lengths.tolist()}
    write_json(out_dir / META, meta)
    return meta


def open_targets(out_dir: str | Path, rows: pd.DataFrame, teacher_fingerprint: str, tokenizer, temperature: float
                 ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], dict]:
    """``(ids, logprobs, spans, meta)``: the stored targets (memory-mapped) and, for each row of ``rows``, the
    ``(first token, length)`` of its targets. Refuses (``ValueError``) targets made by another teacher, with another
    temperature or tokenizer, or lacking a row; ``FileNotFoundError`` when there are none."""
    out_dir = Path(out_dir)
    if not (out_dir / META).exists():
        raise FileNotFoundError(f"{out_dir} holds no teacher targets: run notebook 03 with teacher_targets set")
    meta = json.loads((out_dir / META).read_text("utf-8"))
    if meta["teacher_fingerprint"] != teacher_fingerprint:
        raise ValueError(f"the teacher targets in {out_dir} were made by another teacher (fingerprint "
                         f"{meta['teacher_fingerprint']}); re-run notebook 03 with this teacher")
    if meta["temperature"] != temperature:
        raise ValueError(f"the teacher targets in {out_dir} are softened with temperature {meta['temperature']}, "
                         f"distillation asks for {temperature}: re-run notebook 03 with targets_temperature = "
                         f"{temperature}, or set temperature = {meta['temperature']}")
    if meta["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"the teacher targets in {out_dir} are token ids of another tokenizer")
    position = {key: i for i, key in enumerate(meta["rows"])}
    missing = [key for key in row_keys(rows) if key not in position]
    if missing:
        raise ValueError(f"the teacher targets in {out_dir} lack {len(missing)} of the {len(rows)} utterances (first: "
                         f"{missing[0]}); re-run notebook 03")
    spans = [(meta["offsets"][position[key]], meta["lengths"][position[key]]) for key in row_keys(rows)]
    return np.load(out_dir / "ids.npy", mmap_mode="r"), np.load(out_dir / "logprobs.npy", mmap_mode="r"), spans, meta
