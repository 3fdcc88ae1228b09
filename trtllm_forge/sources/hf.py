"""Resolve a Hugging Face Hub repo to a snapshot in the HF cache.

The HF cache is reused in place: ``snapshot_download`` fills
``<cache>/models--org--name/{blobs,refs,snapshots/<sha>}`` and forge reads the
``snapshots/<sha>`` folder directly. Each file there is a symlink to a blob
whose name is the hub's own hash (sha256 for LFS files, git blob sha1 for
regular ones), so naming a file costs a ``readlink``, not a read.

Environment, read at call time (never at import): ``HF_HUB_OFFLINE`` /
``TRANSFORMERS_OFFLINE`` (cache only), ``HF_HUB_CACHE`` /
``HUGGINGFACE_HUB_CACHE`` / ``HF_HOME`` / ``XDG_CACHE_HOME`` (cache location),
``HF_TOKEN`` (read by huggingface_hub itself when no token is passed).

The token never appears in a returned value, a message or a log line.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import ExitCode, ForgeError, recipe_error, source_error
from trtllm_forge.sources.policy import (
    check_index_complete,
    check_no_remote_code,
    read_config,
    select_files,
)
from trtllm_forge.sources.snapshot import FileRef, Snapshot

_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_SHA_PREFIX = re.compile(r"[0-9a-f]{7,39}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_TRUE = {"1", "ON", "YES", "TRUE"}
_QUIET = NullProgress()

_DOWNLOAD_HINT = "with network access run `hf download {repo}{rev}` (or unset HF_HUB_OFFLINE)"


def resolve_hf(
    repo_id: str,
    revision: str | None,
    *,
    cache_dir: Path | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
    progress: Progress = _QUIET,
    check_config: Callable[[dict[str, Any]], None] | None = None,
) -> Snapshot:
    """Resolve ``repo_id@revision`` to a full commit sha and its files in the HF cache.

    Downloads what is missing unless offline. Only config, generation config,
    tokenizer files and one weight format are fetched (see
    :mod:`trtllm_forge.sources.policy`).

    Args:
        repo_id: ``org/name`` (or ``name``) of a model repo.
        revision: branch, tag, full commit sha or sha prefix; ``None`` means ``main``.
        cache_dir: HF hub cache; default from the environment like huggingface_hub.
        token: hub token; ``None`` lets huggingface_hub use ``HF_TOKEN`` or the login file.
        allow_pickle: accept pickle weights when the repo has no safetensors.
        progress: progress sink.
        check_config: called with config.json before the other files download, so a
            model the recipe cannot use is refused before its weights are fetched.

    Raises:
        ForgeError: SOURCE when the repo, revision or a file cannot be had;
            RECIPE for a malformed repo id, pickle-only repos without
            ``allow_pickle``, or models that need repository code.
    """
    secrets = _secrets(token)
    try:
        return _resolve(repo_id, revision, cache_dir, token, allow_pickle, progress, check_config)
    except ForgeError as err:
        raise _scrubbed(err, secrets) from None


def hub_cache_dir() -> Path:
    """The HF hub cache folder, from the environment as huggingface_hub resolves it."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


@dataclass(frozen=True)
class _Listing:
    commit: str
    names: tuple[str, ...]
    offline: bool


def _resolve(
    repo_id: str,
    revision: str | None,
    cache_dir: Path | None,
    token: str | None,
    allow_pickle: bool,
    progress: Progress,
    check_config: Callable[[dict[str, Any]], None] | None = None,
) -> Snapshot:
    _check_repo_id(repo_id)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    cache = cache.resolve()
    listing = _listing(repo_id, revision, cache, token, progress)
    source = f"{repo_id}@{revision or 'main'}"
    wanted = select_files(listing.names, allow_pickle=allow_pickle, source=source)
    if check_config is not None and "config.json" in wanted:
        first = _download(repo_id, revision, listing, ["config.json"], cache, token, progress)
        check_config(read_config(first))
    root = _download(repo_id, revision, listing, wanted, cache, token, progress)
    files = {name: _file_ref(root, name, repo_id, revision) for name in wanted}
    check_no_remote_code(root, files, source=source)
    check_index_complete(root, files, source=source)
    return Snapshot(
        kind="hf", source=repo_id, commit=listing.commit, root=root, files=files, revision=revision
    )


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise recipe_error(
            f"invalid Hugging Face repo id {repo_id!r}: {err}",
            hint="write it as `org/name`, e.g. `HuggingFaceTB/SmolLM2-135M`",
        ) from None


def _storage(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


# --- revision -> commit sha + file listing ---------------------------------


def _listing(
    repo_id: str, revision: str | None, cache: Path, token: str | None, progress: Progress
) -> _Listing:
    if not hub_offline():
        remote = _remote_listing(repo_id, revision, token, progress)
        if remote is not None:
            return remote
    return _cached_listing(repo_id, revision, cache)


def _remote_listing(
    repo_id: str, revision: str | None, token: str | None, progress: Progress
) -> _Listing | None:
    """Ask the hub; ``None`` when it cannot be reached (the cache is tried next)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    progress.log(f"resolving {repo_id}@{rev} on the Hugging Face Hub")
    try:
        info = HfApi(token=token).model_info(repo_id, revision=rev)
    except _network_errors() as err:
        progress.log(f"hub unreachable ({type(err).__name__}); using the local HF cache")
        return None
    except GatedRepoError:
        raise source_error(
            f"{repo_id} is gated and this token has no access to it",
            hint="accept the licence on the model page and set HF_TOKEN to a token of that account",
        ) from None
    except RepositoryNotFoundError:
        raise _repo_not_found(repo_id, offline=False) from None
    except RevisionNotFoundError:
        if _SHA_PREFIX.fullmatch(rev):
            # The hub resolves names and full shas; a short sha may still be in the cache.
            progress.log(f"the hub does not know {rev!r}; looking for a cached commit it prefixes")
            return None
        raise _revision_not_found(repo_id, rev, offline=False) from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        raise source_error(
            f"the hub answered HTTP {status} for {repo_id}@{rev}",
            hint="check HF_TOKEN and the repo name, or retry later; HF_HUB_OFFLINE=1 uses the cache",
        ) from None
    if not info.sha:
        raise source_error(f"the hub returned no commit for {repo_id}@{rev}")
    names = tuple(s.rfilename for s in (info.siblings or []))
    return _Listing(commit=info.sha, names=names, offline=False)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the hub cannot be reached", across huggingface_hub's transports."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("ConnectError", "TimeoutException")),
        ("httpx", ("ConnectError", "TimeoutException")),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            imported = __import__(module)
        except ImportError:
            continue
        errors.extend(getattr(imported, name) for name in names if hasattr(imported, name))
    return tuple(errors)


def _cached_listing(repo_id: str, revision: str | None, cache: Path) -> _Listing:
    storage = _storage(cache, repo_id)
    if not storage.is_dir():
        raise _repo_not_found(repo_id, offline=True, cache=cache)
    commit = _cached_commit(storage, repo_id, revision or "main")
    return _Listing(commit=commit, names=_cached_names(repo_id, commit, cache), offline=True)


def _cached_commit(storage: Path, repo_id: str, revision: str) -> str:
    snapshots = storage / "snapshots"
    if _FULL_SHA.fullmatch(revision):
        if (snapshots / revision).is_dir():
            return revision
        raise _revision_not_found(repo_id, revision, offline=True, storage=storage)
    ref = storage / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if _FULL_SHA.fullmatch(commit) and (snapshots / commit).is_dir():
            return commit
    if _SHA_PREFIX.fullmatch(revision):
        matches = sorted(p.name for p in _dirs(snapshots) if p.name.startswith(revision))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise recipe_error(
                f"revision {revision!r} of {repo_id} is ambiguous: it prefixes {', '.join(matches)}",
                hint="give more characters of the commit sha",
            )
    raise _revision_not_found(repo_id, revision, offline=True, storage=storage)


def _cached_names(repo_id: str, commit: str, cache: Path) -> tuple[str, ...]:
    """The repo's files at ``commit``: the cached hub listing if any, else what is on disk."""
    snapshot = _storage(cache, repo_id) / "snapshots" / commit
    try:
        # huggingface_hub >= 2 keeps the hub's full listing of each commit it downloaded.
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError
    except ImportError:
        return tuple(sorted(_relative_files(snapshot)))
    try:
        return tuple(
            f.path for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache)
        )
    except CachedRepoTreeNotFoundError:
        return tuple(sorted(_relative_files(snapshot)))


def _relative_files(root: Path) -> Iterator[str]:
    for dirpath, _subdirs, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            yield (rel / name).as_posix()


def _dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


# --- download / locate -------------------------------------------------------


def _silent_bars() -> type:
    """A huggingface_hub progress-bar class that never draws (forge reports through Progress)."""
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    class SilentTqdm(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _download(
    repo_id: str,
    revision: str | None,
    listing: _Listing,
    wanted: list[str],
    cache: Path,
    token: str | None,
    progress: Progress,
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [glob.escape(name) for name in wanted]
    verb = "locating" if listing.offline else "fetching"
    progress.log(f"{verb} {len(wanted)} files of {repo_id} at {listing.commit[:12]}")
    try:
        path = snapshot_download(
            repo_id,
            revision=listing.commit,
            cache_dir=cache,
            token=token,
            local_files_only=listing.offline,
            allow_patterns=patterns,
            tqdm_class=_silent_bars(),
        )
    except LocalEntryNotFoundError as err:
        raise source_error(
            f"{repo_id}@{revision or 'main'} (commit {listing.commit}) is not complete in the HF "
            f"cache: {_first_line(str(err))}",
            hint=_DOWNLOAD_HINT.format(repo=repo_id, rev=_rev_arg(revision)),
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise source_error(
            f"downloading {repo_id}@{revision or 'main'} failed: {type(err).__name__}: "
            f"{_first_line(str(err))}",
            hint="retry, or check free disk space in the HF cache and the network",
        ) from None
    return Path(path)


def _file_ref(root: Path, name: str, repo_id: str, revision: str | None) -> FileRef:
    path = root / name
    try:
        size = path.stat().st_size
    except OSError:
        raise source_error(
            f"{repo_id}@{revision or 'main'}: {name} is missing from the cached snapshot {root}",
            hint=_DOWNLOAD_HINT.format(repo=repo_id, rev=_rev_arg(revision)),
        ) from None
    return FileRef(size=size, digest=_blob_hash(path))


def _blob_hash(path: Path) -> str | None:
    """The hub hash a cache symlink names: ``snapshots/<sha>/f -> ../../blobs/<hash>``."""
    if not path.is_symlink():
        return None  # a cache without symlinks (e.g. Windows) holds plain copies
    blob = Path(os.readlink(path)).name
    if _SHA256.fullmatch(blob):
        return f"sha256:{blob}"
    if _FULL_SHA.fullmatch(blob):
        return f"git-sha1:{blob}"
    return None


# --- messages ----------------------------------------------------------------


def _repo_not_found(repo_id: str, *, offline: bool, cache: Path | None = None) -> ForgeError:
    if offline:
        return source_error(
            f"{repo_id} is not in the HF cache {cache} and the hub is not being asked (offline)",
            hint=_DOWNLOAD_HINT.format(repo=repo_id, rev="") + "; or check the spelling",
        )
    return source_error(
        f"repository {repo_id} was not found on the Hugging Face Hub (or it is private)",
        hint="check the spelling; for a private repo set HF_TOKEN to a token with access",
    )


def _revision_not_found(
    repo_id: str, revision: str, *, offline: bool, storage: Path | None = None
) -> ForgeError:
    if not offline:
        return source_error(
            f"revision {revision!r} of {repo_id} does not exist on the hub",
            hint="check the branch, tag or commit sha",
        )
    known = _known_revisions(storage) if storage is not None else ""
    return source_error(
        f"revision {revision!r} of {repo_id} is not in the HF cache (offline){known}",
        hint=_DOWNLOAD_HINT.format(repo=repo_id, rev=_rev_arg(revision)),
    )


def _known_revisions(storage: Path) -> str:
    refs = storage / "refs"
    names = sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
    shas = sorted(p.name[:12] for p in _dirs(storage / "snapshots"))
    listed = names + shas
    return f"; cached: {', '.join(listed)}" if listed else "; nothing is cached for it"


def _rev_arg(revision: str | None) -> str:
    return f" --revision {revision}" if revision else ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


# --- secrets -------------------------------------------------------------------


def _secrets(token: str | None) -> list[str]:
    found = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    return [s for s in found if s]


def _scrub_text(text: str | None, secrets: list[str]) -> str | None:
    if text is None:
        return None
    for secret in secrets:
        text = text.replace(secret, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def _scrubbed(err: ForgeError, secrets: list[str]) -> ForgeError:
    """Belt and braces: no message forge raises may carry a token, even one echoed by the hub."""
    return ForgeError(
        ExitCode(err.code),
        _scrub_text(err.message, secrets) or "",
        hint=_scrub_text(err.hint, secrets),
        location=err.location,
    )
