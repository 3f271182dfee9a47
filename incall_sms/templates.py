"""Message templates with ``{var}`` and ``{{var}}`` placeholders.

Both styles name the same variable; whitespace inside double braces is allowed
(``{{ caller_name }}``). Variable names are identifiers (letters, digits, ``_``,
not starting with a digit). Any other brace is literal text, so JSON-ish text
or a lone ``{`` passes through unchanged. Rendering never leaves a placeholder in
the output: a variable without a value and without a default raises
:class:`~incall_sms.errors.MissingVariableError`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from incall_sms.errors import MissingVariableError

__all__ = ["Template", "clean_value"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

#: Longest value substituted for one variable (characters); longer values are cut.
MAX_VALUE_CHARS = 300


def clean_value(value: object) -> str:
    """Make a variable value safe to put in an SMS.

    Control and bidi-override characters are removed, runs of whitespace folded,
    and the result cut to :data:`MAX_VALUE_CHARS`.
    """
    text = _CONTROL.sub("", str(value))
    text = " ".join(text.split())
    return text[:MAX_VALUE_CHARS]


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """A parsed message template.

    Attributes:
        source: The template text as written.
    """

    source: str

    @property
    def variables(self) -> tuple[str, ...]:
        """Names of the variables the template uses, in order of first use."""
        names = (m.group(1) or m.group(2) for m in _PLACEHOLDER.finditer(self.source))
        return tuple(dict.fromkeys(names))

    def unknown_variables(self, known: set[str] | frozenset[str]) -> list[str]:
        """Return the variables used by the template that are not in ``known``."""
        return [name for name in self.variables if name not in known]

    def render(
        self,
        values: Mapping[str, object],
        *,
        defaults: Mapping[str, str] | None = None,
    ) -> str:
        """Substitute every placeholder.

        Args:
            values: Variable values; ``None`` or an empty string counts as missing.
            defaults: Fallback values for variables missing from ``values``.

        Returns:
            The rendered text.

        Raises:
            MissingVariableError: Some variables have neither a value nor a default.
        """
        defaults = defaults or {}
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            value = values.get(name)
            text = clean_value(value) if value is not None else ""
            if not text:
                text = clean_value(defaults.get(name, "") or "")
            if not text:
                missing.append(name)
            return text

        rendered = _PLACEHOLDER.sub(substitute, self.source)
        if missing:
            raise MissingVariableError(missing)
        return rendered
