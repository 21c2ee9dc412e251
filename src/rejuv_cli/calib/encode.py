"""Examples -> token ids with a response mask, and padded batches for teacher forcing.

The mask marks the tokens of assistant turns: under teacher forcing those are the prediction
targets the calibration statistics are taken over; system, user and tool text is context.
Text is rendered with the SFT tokenizer's chat template when it has one (the format the model
was tuned on), else as plain lines. torch is imported only by `batches`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rejuv_cli.calib.data import Example
from rejuv_cli.errors import CalibError, first_line


@dataclass
class Encoded:
    """One tokenized example. `response[i]` is True when token i belongs to an assistant turn
    (a prediction target); len(response) == len(input_ids)."""

    input_ids: list[int]
    response: list[bool]
    source: str


def pad_id_of(tokenizer) -> int:
    """The id to pad with: pad_token_id, else eos_token_id, else 0 (padding is masked out)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def encode(
    examples: Sequence[Example], tokenizer, max_tokens: int
) -> tuple[list[Encoded], list[str]]:
    """Tokenize `examples` with `tokenizer` (a transformers tokenizer); returns (encoded,
    warnings) in input order.

    Each example is cut to its first `max_tokens` tokens; one that keeps no response token is
    dropped with a warning naming its source, and one warning says how many were cut. Raises
    CalibError when the chat template fails on an example or cannot be split into turns.
    """
    if max_tokens < 1:
        raise CalibError(f"max_tokens must be at least 1 (got {max_tokens})")
    out: list[Encoded] = []
    warnings: list[str] = []
    truncated = fallback = 0
    for ex in examples:
        if tokenizer.chat_template:
            segments, stable = template_segments(ex, tokenizer)
            fallback += not stable
            ids: list[int] = []
        else:
            # Up to the last assistant turn, like the template path: later text has no targets.
            last = max(
                (i for i, m in enumerate(ex.messages) if m["role"] == "assistant"), default=-1
            )
            segments = [(m["content"] + "\n", m["role"] == "assistant") for m in ex.messages]
            segments = segments[: last + 1]
            bos = tokenizer.bos_token_id
            ids = [] if bos is None else [int(bos)]
        mask = [False] * len(ids)
        # Each segment is tokenized on its own, so a token never straddles the boundary between
        # context and response (merging across it would make the mask ambiguous).
        for text, is_response in segments:
            if text:
                piece = tokenizer.encode(text, add_special_tokens=False)
                ids += piece
                mask += [is_response] * len(piece)
        if len(ids) > max_tokens:
            truncated += 1
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        if not any(mask):
            warnings.append(
                f"{ex.source}: no response tokens within the first {max_tokens} tokens; "
                "example dropped"
            )
            continue
        out.append(Encoded(ids, mask, ex.source))
    if fallback:
        warnings.append(
            f"{fallback} of {len(examples)} examples: the chat template re-renders earlier turns "
            "differently, so only their last assistant turn is marked as response"
        )
    if truncated:
        warnings.append(
            f"{truncated} of {len(examples)} examples were longer than {max_tokens} tokens and "
            f"were cut to their first {max_tokens}"
        )
    share = unk_share(out, tokenizer)
    if share is not None and share > UNK_WARN:
        warnings.append(
            f"{share:.0%} of the calibration tokens are the tokenizer's unknown token "
            f"{tokenizer.unk_token!r}: it cannot represent this text, so the output and unit "
            "metrics say little about the model; calibrate on text in the model's own "
            "vocabulary (--calib FILE)"
        )
    return out, warnings


UNK_WARN = 0.5  # warn when more than this share of the tokens is the unknown token


def unk_share(encoded: Sequence[Encoded], tokenizer) -> float | None:
    """Share of all tokens of `encoded` that are the tokenizer's unknown token; None when the
    tokenizer has none (byte-level tokenizers represent any text) or there are no tokens."""
    unk = tokenizer.unk_token_id
    total = sum(len(e.input_ids) for e in encoded)
    if unk is None or not total:
        return None
    return sum(e.input_ids.count(unk) for e in encoded) / total


def template_segments(ex: Example, tokenizer) -> tuple[list[tuple[str, bool]], bool]:
    """The chat-template rendering of `ex` as (text, is_response) segments, and whether every
    assistant turn could be marked.

    For assistant message i the turn's text is render(msgs[:i+1]) minus the prefix
    render(msgs[:i], add_generation_prompt=True): the generation prompt is context and the
    turn's content plus its end-of-turn marker are response. That needs each render to extend
    the previous one; templates that rewrite history (e.g. dropping earlier reasoning) do not,
    and then only the last assistant turn is marked. Messages after the last assistant turn are
    left out: they hold no prediction target.
    """
    msgs = list(ex.messages)
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    segments: list[tuple[str, bool]] = []
    done = ""  # the text the segments cover so far
    for i in turns:
        prefix = _render(tokenizer, msgs[:i], True, ex.source)
        through = _render(tokenizer, msgs[: i + 1], False, ex.source)
        if not (prefix.startswith(done) and through.startswith(prefix)):
            break
        segments += [(prefix[len(done) :], False), (through[len(prefix) :], True)]
        done = through
    else:
        return segments, True
    last = turns[-1]
    prefix = _render(tokenizer, msgs[:last], True, ex.source)
    through = _render(tokenizer, msgs[: last + 1], False, ex.source)
    if not through.startswith(prefix):
        raise CalibError(
            f"{ex.source}: the chat template's rendering of the conversation does not start "
            "with its rendering up to the last assistant turn, so the response cannot be "
            "located; use a tokenizer with a different chat template or prompt/response data"
        )
    return [(prefix, False), (through[len(prefix) :], True)], False


def _render(tokenizer, msgs: list[dict], generation_prompt: bool, source: str) -> str:
    try:
        text = tokenizer.apply_chat_template(
            msgs, add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception as e:  # jinja errors, template-raised exceptions: all "cannot render"
        raise CalibError(
            f"{source}: the tokenizer's chat template cannot render this conversation "
            f"({first_line(e)}); some templates accept only certain roles or orders"
        ) from None
    if not isinstance(text, str):
        raise CalibError(f"{source}: the chat template did not render to text")
    return text


def batches(encoded: Sequence[Encoded], batch_tokens: int, pad_id: int) -> Iterator[tuple]:
    """Right-padded batches of consecutive examples, in the given order.

    Yields (input_ids [B, T] long, attention_mask [B, T] long, response [B, T] bool) with
    T = the longest example in the batch and B * T <= batch_tokens; an example longer than
    batch_tokens gets a batch of its own. Padding has input id `pad_id`, attention 0 and
    response False.
    """
    if batch_tokens < 1:
        raise CalibError(f"batch_tokens must be at least 1 (got {batch_tokens})")
    group: list[Encoded] = []
    width = 0
    for enc in encoded:
        wider = max(width, len(enc.input_ids))
        if group and (len(group) + 1) * wider > batch_tokens:
            yield _collate(group, width, pad_id)
            group, wider = [], len(enc.input_ids)
        group.append(enc)
        width = wider
    if group:
        yield _collate(group, width, pad_id)


def _collate(group: list[Encoded], width: int, pad_id: int) -> tuple:
    import torch

    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(group), width), dtype=torch.long)
    resp = torch.zeros((len(group), width), dtype=torch.bool)
    for row, enc in enumerate(group):
        n = len(enc.input_ids)
        ids[row, :n] = torch.tensor(enc.input_ids, dtype=torch.long)
        attn[row, :n] = 1
        resp[row, :n] = torch.tensor(enc.response, dtype=torch.bool)
    return ids, attn, resp
