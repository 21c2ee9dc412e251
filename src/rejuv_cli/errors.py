"""One error hierarchy. Every message names the thing, the values involved and the next step.

The CLI turns a RejuvError into one line on stderr and its `exit_code`; anything else is a bug
and shows a traceback.
"""


class RejuvError(Exception):
    """A problem the user can fix; shown as one line, exit code 1."""

    exit_code = 1


class UsageError(RejuvError):
    """Bad command-line arguments (exit code 2, like Click's own usage errors)."""

    exit_code = 2


class CheckpointError(RejuvError):
    """A checkpoint directory, index or weight file is missing, unsafe or malformed."""


class QuantizedError(CheckpointError):
    """A checkpoint stores quantized weights (FP8, GPTQ, AWQ, bitsandbytes, ...), which rejuv
    cannot fuse; the message names the input, the format and how to get unquantized weights."""


class ResolveError(RejuvError):
    """A model argument is neither a local directory nor a reachable Hub repository."""


class RecipeError(RejuvError):
    """A recipe file failed validation; the message lists every problem, one per line."""


class MismatchError(RejuvError):
    """BASE and SFT are not two versions of the same architecture."""


class ArchError(RejuvError):
    """The model family has no unit map, or the checkpoint does not fit its unit map."""


class OutputError(RejuvError):
    """The output directory cannot be written as asked (exists, inside an input, ...)."""


class NonFiniteError(RejuvError):
    """A tensor would be written with NaN or infinite values."""


class CalibError(RejuvError):
    """Calibration data is missing or malformed."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for wrapping
    third-party errors into one-line RejuvErrors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
