"""What every command-line script shares: turning expected failures into one-line errors with exit code 2.

Scripts keep their ``main()`` free of error plumbing and end with ``run_main(main)``. Library code raises
``UserError`` (or any ValueError subclass listed in ``USER_ERRORS``) with a message that names the file, key or
line at fault and what was expected; the user sees ``error: <message>`` and no traceback. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (a file, a flag, a config key): reported in one line, exit code 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type that means "the input is wrong", collected lazily to avoid import cycles."""
    types: list[type[BaseException]] = [UserError, FileNotFoundError]
    for module, name in (
        ("common.attributes", "UnknownAttributeError"),
        ("common.celeba", "CelebAFormatError"),
        ("common.config", "ConfigError"),
        ("common.run", "RunExistsError"),
        ("common.run", "NonFiniteLossError"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
            types.append(getattr(mod, name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main(), mapping user errors to ``error: ...`` on stderr and exit code 2."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except user_error_types() as exc:
        message = str(exc)
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in message:
            message = f"{exc.filename}: {message}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
