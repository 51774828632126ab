"""Type stubs of prh's compiled core (prh._prh). Use the `prh` package's API instead: these
functions take and return JSON strings in the CLI's `--format json` shapes."""

from typing import Any, Callable, Optional, Sequence

__version__: str
METRIC_OPTIONS: list[str]

class Error(Exception):
    """Any error prh reports (the base class). Every class below lives in module `prh` and
    survives pickling (an error in a multiprocessing or DataLoader worker reaches the parent)."""

class InvalidInput(Error):
    """Bad input: a malformed array or file, NaN/Inf, wrong shapes, an unknown metric, an
    out-of-range option (the message names the value)."""

class NotFound(Error):
    """A named model, checkpoint, dataset, representation or registry does not exist."""

class Conflict(Error):
    """The request conflicts with what the registry holds (a name taken, a dataset of another n)."""

class NotCached(Conflict):
    """Cached alignments a query needs are missing; the message names the `prh align` command."""

class Unsupported(Error):
    """A well-formed request prh does not do (a URL scheme, a newer catalog schema)."""

class Unavailable(Error):
    """A backend is busy or unreachable for now; trying again can succeed."""

class BackendError(Error):
    """A backend or the operating system failed in a way retrying will not fix."""

class Corrupt(Error):
    """Stored data does not match its hash or cannot be parsed; `prh verify` names it."""

class Interrupted(Error):
    """A deadline stopped the operation; nothing of it was committed (Ctrl-C raises
    KeyboardInterrupt)."""

class InternalError(Error):
    """A bug in prh; please report it with the message."""

# (address, bytes spanned, shape, strides in elements, dtype "f16"|"bf16"|"f32"|"f64", owner)
ArrayIn = tuple[int, int, list[int], list[int], str, Any]
ProgressFn = Callable[[int, int], Any]

def discover(path: Optional[str] = None) -> str: ...
def init(path: str, catalog: Optional[str] = None, blobs: Optional[str] = None) -> str: ...
def ingest(
    root: str,
    opts: str,
    arrays: Optional[Sequence[ArrayIn]] = None,
    path: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
) -> str: ...
def align(root: str, opts: str, progress: Optional[ProgressFn] = None) -> str: ...
def chart(root: str, kind: str, opts: str) -> str: ...
def query(root: str, sql: str) -> str: ...
def listing(root: str, what: str, model: Optional[str] = None) -> str: ...
def export(root: str, out: str, models: Optional[Sequence[str]] = None) -> str: ...
def import_bundle(root: str, bundle: str) -> str: ...
def compare(a: Sequence[ArrayIn], b: Sequence[ArrayIn], opts: str) -> float: ...
