"""The error family for problems a user can fix.

An `LlmctlError` is printed as one clean message (plus an optional hint) and the
CLI exits with code 2; anything else is a bug and keeps its traceback. `--debug`
shows the traceback for everything.
"""

from __future__ import annotations

EXIT_USAGE = 2


class LlmctlError(Exception):
    """A problem the user can fix: bad input, missing file, unsafe name."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class ConfigError(LlmctlError):
    """A config file is missing, malformed, or fails validation.

    `problems` holds one line per problem, each naming the file, the key path and
    what is wrong, so a user fixes everything in one pass.
    """

    def __init__(self, path: str, problems: list[str], hint: str | None = None):
        self.path = path
        self.problems = problems
        if len(problems) == 1:
            message = f"{path}: {problems[0]}"
        else:
            message = f"{path}: {len(problems)} problems\n" + "\n".join(
                f"  {path}: {p}" for p in problems
            )
        super().__init__(message, hint)
