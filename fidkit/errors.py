"""fidkit's exception types and the CLI exit codes they map to.

Every error a user can cause is a :class:`FidkitError` whose message is one line that names the
file (or value) at fault and what to do about it. The CLI prints ``fidkit: error: <message>`` on
stderr and exits with the class's ``exit_code``; anything else is a bug in fidkit.
"""
from __future__ import annotations

# Exit codes, documented in the README. 0 is success.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in fidkit: please report it
EXIT_USAGE = 2  # bad arguments or bad input (files, folders, stats files)
EXIT_WEIGHTS = 3  # the network weights could not be had (offline, bad hash)
EXIT_MISMATCH = 4  # the two sides were made differently (refused without --force)
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGUSR1 after saving a checkpoint: rerun to resume
EXIT_INTERRUPTED = 130


class FidkitError(Exception):
    """Base class of every error fidkit raises on purpose."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        # Messages are one line: the CLI relies on it.
        super().__init__(" ".join(str(message).split()))


class UsageError(FidkitError, ValueError):
    """An argument value that cannot work (unknown convention, bad dims, ...)."""


class InputError(FidkitError, ValueError):
    """A file or folder that cannot be read as what it should be."""


class BadImageError(InputError):
    """One image file that cannot be decoded (truncated, not an image, a decompression bomb)."""


class StatsFileError(InputError):
    """A statistics file that is malformed, hostile, or holds impossible values."""


class WeightsError(FidkitError):
    """The Inception weights are missing, corrupted, or of the wrong architecture."""

    exit_code = EXIT_WEIGHTS


class PreemptedError(FidkitError):
    """A long run stopped by SIGTERM or SIGUSR1 (e.g. SLURM pre-emption) after writing its
    checkpoint; the same command resumes it (exit code 75, EX_TEMPFAIL of sysexits.h)."""

    exit_code = EXIT_PREEMPTED


class ProvenanceMismatchError(FidkitError):
    """Two statistics were made in different ways (dims, convention, weights, DICOM options)."""

    exit_code = EXIT_MISMATCH


class FidkitWarning(UserWarning):
    """Something a user should know about a number fidkit still computed: non-canonical weights,
    fewer images than feature dimensions, a rank-deficient covariance, sides compared with
    ``force=True``, a lowered KID subset size, a restrictive weights licence. The command line
    prints each as one ``fidkit: warning:`` line; the Python API raises it with :mod:`warnings`."""
