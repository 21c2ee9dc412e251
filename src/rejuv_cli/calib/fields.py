"""Which keys or columns of the user's calibration data hold each part of an example (the
--prompt-field, --response-field, --answer-field and --messages-field settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fields:
    """The keys of a JSONL object, or the columns of a table, that hold each part of an
    example; the defaults are the format's own names."""

    prompt: str = "prompt"
    response: str = "response"
    answer: str = "answer"
    messages: str = "messages"

    @classmethod
    def of(cls, settings) -> Fields:
        """The fields that settings name: attributes `prompt_field`, ... (ResetSettings,
        DiagnoseJob) or the same keys of a dict (a command's values)."""
        get = settings.get if isinstance(settings, dict) else settings.__getattribute__
        return cls(*(get(f"{name}_field") for name in ("prompt", "response", "answer",
                                                       "messages")))  # fmt: skip

    def params(self) -> dict[str, str]:
        """As settings: {"prompt_field": "prompt", ...}."""
        return {f"{k}_field": v for k, v in vars(self).items()}
