"""What every command line of the project shares: help that shows the defaults, and errors
printed as one line naming the file, key or flag (`prog: error: ...`, exit status 1)."""
import argparse
import os
import sys
import warnings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, except unset ones (None, False) and those whose help already
    says what happens by default; keeps the description's line breaks (usage examples)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or 'default' in (action.help or ''):
            return action.help or ''
        return super()._get_help_string(action)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error's message (a DataLoader worker's error comes wrapped
    in its traceback: its last line is the message)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if lines[0].startswith('Caught ') else lines[0]


def report(prog: str, exc: BaseException) -> int:
    """Print `prog: error: <one line>` on stderr; returns the exit status 1."""
    print('%s: error: %s' % (prog, first_line(exc)), file=sys.stderr)
    return 1


def interrupted(prog: str, exc: BaseException, what: str = '') -> int:
    """Ctrl-C (130) or SIGTERM turned into SystemExit by outputs.exit_on_sigterm (its status)."""
    print('%s: interrupted%s' % (prog, '; ' + what if what else ''), file=sys.stderr)
    return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130


def one_line_warnings(prog: str) -> None:
    """Print this project's warnings (a damaged video used with --allow_damaged, a dataset's frames
    resized, ...) as one line, `prog: warning: <message>`, instead of Python's two (file, line and
    source line). Other warnings keep Python's format."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if _ours(category):
            print('%s: warning: %s' % (prog, message), file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    warnings.showwarning = show


def _ours(category) -> bool:
    """Whether a warning class is defined in a file of this project."""
    module = sys.modules.get(getattr(category, '__module__', ''))
    path = getattr(module, '__file__', None)
    return path is not None and os.path.dirname(os.path.abspath(path)).startswith(_ROOT)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, above core/
