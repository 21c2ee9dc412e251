"""The toy task of the handoff experiment: character-level arithmetic.

- Pretraining text (broad): `a+b=c` and `a-b=c` with a in 0..49 and b in 0..9, and direct
  sums of three single digits `3+5+7=15`.
- SFT / RL task (narrow, verifiable): a two-digit term plus two one-digit terms with a worked
  answer, prompt `23+4+5=` -> response `27+5=32` (partial sum, then the total): each step is a
  sum the base has seen, the composition and format are new. The reward is 1 when the last
  number of the response is the true total, else 0; the format is not graded.

Every sample is drawn from a `random.Random` the caller seeds, so data order is fixed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list("0123456789+-=")
# user turn: "<s>" + prompt; assistant turn: response + "</s>". No generation prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}</s>"
    "{% else %}<s>{{ m['content'] }}{% endif %}{% endfor %}"
)
FIRST, REST = (10, 29), (1, 9)  # every prompt has 7 characters; 20 × 9 × 9 = 1620 problems


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, int, int]

    @property
    def prompt(self) -> str:
        a, b, c = self.terms
        return f"{a}+{b}+{c}="

    @property
    def answer(self) -> int:
        return sum(self.terms)

    @property
    def worked(self) -> str:
        """The SFT target: partial sum, then the total."""
        a, b, c = self.terms
        return f"{a + b}+{c}={a + b + c}"


def sample_problem(rng: random.Random) -> Problem:
    return Problem((rng.randint(*FIRST), rng.randint(*REST), rng.randint(*REST)))


def problems(seed: int, n: int, exclude: set[Problem] = frozenset()) -> list[Problem]:
    """`n` distinct problems from `seed`, none of them in `exclude`."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        p = sample_problem(rng)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def pretrain_line(rng: random.Random) -> str:
    """One line of the broad pretraining corpus (whole sequence is trained on)."""
    kind = rng.random()
    a, b = rng.randint(0, 49), rng.randint(0, 9)
    if kind < 0.5:
        return f"{a}+{b}={a + b}"
    if kind < 0.75 and a >= b:
        return f"{a}-{b}={a - b}"
    terms = [rng.randint(0, 9) for _ in range(3)]
    return "+".join(map(str, terms)) + f"={sum(terms)}"


_FINAL = re.compile(r"(\d+)$")


def reward(problem: Problem, response: str) -> float:
    """1.0 when the last number of `response` is the total, else 0.0."""
    match = _FINAL.search(response.strip())
    return float(match is not None and int(match.group(1)) == problem.answer)


def make_tokenizer():
    """A character-level fast tokenizer (17 tokens) with the chat template above."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast
