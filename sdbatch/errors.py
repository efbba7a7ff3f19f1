"""Every error sdbatch raises for its users, and the one rule for read failures that may pass; stdlib only."""

from __future__ import annotations

import contextlib
import urllib.error


class UserFacing(Exception):
    """An error whose message is the whole story (what is wrong, where, the fix): the CLI prints it and exits
    with `exit_code`."""

    exit_code = 2  # the input or the request must change before a rerun can work


class SpecError(UserFacing, ValueError):
    """A job setting is invalid; the message names the setting and the fix."""


class ManifestError(UserFacing, ValueError):
    """The manifest cannot be used; the message names the column, the row and the fix."""


class UsageError(UserFacing, ValueError):
    """The request cannot work as given (e.g. a local output with a remote cluster)."""


class EstimateError(UsageError):
    """A rate or price that cannot give an estimate; the message names the flag and the fix."""


class GalleryError(UsageError):
    """The gallery cannot be made as asked; the message names the flag and the fix."""


class RunMismatch(UserFacing, RuntimeError):
    """The output already holds a different run; mixing the two would corrupt both."""


class StoreError(UserFacing):
    """A storage failure, phrased for the user; never carries credentials."""


class StoreUnavailable(StoreError):
    """The store could not be reached, or answered with a server error or throttling, after its retries:
    a condition that may pass, unlike a missing object or a refusal."""


class ObjectNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return Exception.__str__(self)


class JobsError(UserFacing, RuntimeError):
    """The Ray Jobs API refused or cannot be reached; the message says what to do."""


class FatalRunError(UserFacing, RuntimeError):
    """The run cannot go on (e.g. its first model cannot be loaded); retrying would not help."""


class RunStopped(UserFacing, RuntimeError):
    """The run could not go on for a reason outside its input (its Ray lost, no actor could start in time):
    what is committed stays, and rerunning the same command resumes."""

    exit_code = 1  # the same command may work later: not a usage error


class RayLost(RunStopped):
    """The private Ray's node died: nothing it held can go on, but a new private Ray can."""


class ModelLoadError(UserFacing, RuntimeError):
    """A model reference cannot be turned into a pipeline; the message says what to do."""


class VariantError(RuntimeError):
    """A row's LoRA, ControlNet, VAE or control image is unusable: the rows that need it fail, the shard goes on."""


class FetchError(VariantError):
    """An input could not be read; the message says why (callers name the input with `labelled`)."""


class InputUnavailable(RuntimeError):
    """An input could not be read for a reason that may pass (S3 unreachable, throttling or server errors
    after the client's retries, an HTTP 5xx or timeout): its shard fails and is retried, its rows do not."""


def may_pass(exc: BaseException) -> bool:
    """Whether a read failure may pass on a later try (see InputUnavailable)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    if isinstance(exc, urllib.error.URLError):  # a connect timeout comes wrapped
        return isinstance(exc.reason, TimeoutError)
    return isinstance(exc, (StoreUnavailable, TimeoutError))


@contextlib.contextmanager
def reading(fail_as: type[Exception], what: str, catch: tuple[type[BaseException], ...] = (Exception,)):
    """Read failures (of the `catch` types) as InputUnavailable when they may pass, else as `fail_as`;
    the message is `what` followed by the failure. Errors already of either kind pass through."""
    try:
        yield
    except (fail_as, InputUnavailable):
        raise
    except catch as exc:
        raise (InputUnavailable if may_pass(exc) else fail_as)(f"{what}{_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    # Store errors are already sentences for the user; anything else needs its type to make sense.
    return f": {exc}" if isinstance(exc, StoreError) else f" ({type(exc).__name__}: {exc})"
