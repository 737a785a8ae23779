"""The data directory and verified downloads of dataset files.

Implements where tfcredit keeps data (`resolve_data_dir`), streamed sha256 digests
(`sha256_of`), an atomic verified HTTP download (`download`) and `ensure_files`,
which returns the paths of a dataset's files after verifying the ones present and
downloading (directly or out of a zip / tar.gz archive) the ones absent.

The layout under the data directory is one folder per dataset: `ptb/`,
`ptb_char/`, `wikitext-2/`, `text8/`, `mnist/`, ... (a read-only copy prepared
elsewhere can be used as it is through `--data_dir` or `TFCREDIT_DATA_DIR`).
"""

import dataclasses
import hashlib
import os
import http.client
import pathlib
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from typing import IO, Iterator, Mapping, Sequence

from tfcredit.errors import DataError

DATA_DIR_ENV = 'TFCREDIT_DATA_DIR'
DEFAULT_DATA_DIR = '~/.cache/tfcredit'

# Canonical URL prefix -> replacement prefix, consulted by `ensure_files` before
# every download. Lets a site mirror (or a test's local HTTP server) stand in for
# the canonical hosts without editing the dataset registries.
BASE_URL_OVERRIDES: dict[str, str] = {}

_CHUNK = 1 << 20
_USER_AGENT = 'tfcredit-data-loader'
_HOW_TO_POINT = (
    f'Pass --data_dir=<folder> (or data_dir=...) or set {DATA_DIR_ENV} to use '
    'another data directory.')


class DownloadError(DataError):
  """A download could not be done (network, HTTP status or file-system error).

  Distinct from a completed download whose content fails verification, which is a
  plain `DataError`: `ensure_files` turns this one into a message listing every
  missing file and where to put it by hand.

  Attributes:
    url: The address that could not be fetched.
    reason: Why, without the advice of the full message.
  """

  def __init__(self, message: str, url: str, reason: str):
    super().__init__(message)
    self.url = url
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class FileSpec:
  """One file of a dataset and how to obtain it.

  Attributes:
    name: File name inside the dataset folder, e.g. 'ptb.train.txt'.
    sha256: Expected hex digest of the file, or None when none is known (the
      caller then verifies the content itself).
    url: Where the file comes from: the file itself, or the archive that holds it
      when `member` is set.
    member: Path of the file inside the archive at `url` (zip or tar.gz), or None
      when `url` is the file itself.
  """

  name: str
  sha256: str | None = None
  url: str | None = None
  member: str | None = None

  def source(self) -> str:
    """Human-readable origin of the file, for error messages."""
    if self.url is None:
      return 'no download source known'
    if self.member is None:
      return self.url
    return f'member {self.member!r} of {self.url}'


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Returns the root folder holding tfcredit's datasets.

  Args:
    data_dir: Explicit folder; wins over everything else.

  Returns:
    `data_dir` if given, else the `TFCREDIT_DATA_DIR` environment variable if set
    and non-empty, else `~/.cache/tfcredit` (with `~` expanded). The folder need
    not exist.
  """
  if data_dir is None or str(data_dir) == '':
    data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return pathlib.Path(data_dir).expanduser()


def sha256_of(path: str | os.PathLike) -> str:
  """Returns the hex sha256 of a file, read in 1 MiB chunks (files reach 100 MB)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _copy_hashing(source: IO[bytes], target: IO[bytes]) -> str:
  digest = hashlib.sha256()
  for chunk in iter(lambda: source.read(_CHUNK), b''):
    digest.update(chunk)
    target.write(chunk)
  return digest.hexdigest()


def _write_verified(destination: pathlib.Path, source: IO[bytes],
                    sha256: str | None, origin: str) -> pathlib.Path:
  """Streams `source` to a temporary file next to `destination`, verifies, renames.

  The temporary file lives in the destination folder so that `os.replace` is an
  atomic rename: readers never see a partial or unverified file.
  """
  try:
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=destination.parent, prefix=f'.{destination.name}.', suffix='.part',
        delete=False)
  except OSError as e:
    raise DownloadError(
        f'Cannot write {destination}: {e}. Make the folder {destination.parent} '
        f'writable or choose another data directory. {_HOW_TO_POINT}',
        url=origin, reason=f'cannot write in {destination.parent}: {e}') from e
  temp = pathlib.Path(handle.name)
  try:
    with handle:
      actual = _copy_hashing(source, handle)
    if sha256 is not None and actual != sha256.lower():
      raise DataError(
          f'Checksum mismatch for {origin}: expected sha256 {sha256.lower()}, got '
          f'{actual}. The source is corrupt or has changed; nothing was written to '
          f'{destination}. Retry later, or obtain the file elsewhere and put it '
          f'at {destination} by hand.')
    os.replace(temp, destination)
  except BaseException:
    temp.unlink(missing_ok=True)
    raise
  return destination


def download(url: str, destination: str | os.PathLike, sha256: str | None = None,
             timeout: float = 30.0) -> pathlib.Path:
  """Downloads `url` to `destination` atomically, verifying its sha256 if given.

  Args:
    url: Address to fetch (http, https or file).
    destination: Path of the file to create; its folder is created if needed. An
      existing file there is replaced only after a verified download.
    sha256: Expected hex digest, or None to skip verification.
    timeout: Seconds to wait for the connection and for each read.

  Returns:
    `destination` as a `pathlib.Path`.

  Raises:
    DownloadError: The download failed (network, HTTP status, file system); the
      message says where to put the file by hand.
    DataError: The downloaded content does not match `sha256`; no file is left.
  """
  destination = pathlib.Path(destination)
  request = urllib.request.Request(url, headers={'User-Agent': _USER_AGENT})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return _write_verified(destination, response, sha256, url)
  except DataError:
    raise
  except (urllib.error.URLError, http.client.HTTPException, OSError,
          ValueError) as e:
    # URLError covers HTTP status errors; OSError timeouts and resets;
    # HTTPException a truncated body; ValueError an unusable URL.
    raise DownloadError(
        f'Download of {url} failed: {e}. If this machine cannot reach it, fetch '
        f'the file elsewhere and put it at {destination} by hand.',
        url=url, reason=str(e)) from e


# `ensure_files` takes a `download` flag that shadows the function inside it.
_download_file = download


def _apply_overrides(url: str, overrides: Mapping[str, str]) -> str:
  # The longest matching prefix wins so that a specific override can refine a
  # broad one.
  for prefix in sorted(overrides, key=len, reverse=True):
    if url.startswith(prefix):
      return overrides[prefix] + url[len(prefix):]
  return url


def _archive_name(url: str) -> str:
  return url.rstrip('/').rsplit('/', 1)[-1] or 'archive'


def _normalize_member(name: str) -> str:
  # Tar archives often name members './dir/file'; accept either spelling.
  while name.startswith('./'):
    name = name[2:]
  return name


def _open_archive_members(archive: pathlib.Path, url: str
                          ) -> Iterator[tuple[str, IO[bytes]]]:
  """Yields (normalized member name, readable stream) for regular files."""
  try:
    if zipfile.is_zipfile(archive):
      with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
          if not info.is_dir():
            with zf.open(info) as stream:
              yield _normalize_member(info.filename), stream
      return
    with tarfile.open(archive, 'r:*') as tf:
      for info in tf:
        if info.isfile():
          stream = tf.extractfile(info)
          if stream is not None:
            with stream:
              yield _normalize_member(info.name), stream
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
    raise DataError(
        f'The archive downloaded from {url} is not a readable zip or tar.gz '
        f'file ({e}). Retry later, or obtain its files elsewhere and put them in '
        f'{archive.parent} by hand.') from e


def _extract_members(archive: pathlib.Path, url: str, folder: pathlib.Path,
                     specs: Sequence[FileSpec]) -> None:
  """Extracts just the files of `specs` from `archive` into `folder`, verified."""
  wanted = {_normalize_member(s.member): s for s in specs}
  for member, stream in _open_archive_members(archive, url):
    spec = wanted.pop(member, None)
    if spec is not None:
      try:
        # Written under spec.name, never under the member path: an archive
        # cannot place files outside `folder`.
        _write_verified(folder / spec.name, stream, spec.sha256,
                        f'member {spec.member!r} of {url}')
      except DataError:
        raise
      except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error,
              OSError) as e:
        # Compressed data is checked only as it is read, i.e. here.
        raise DataError(
            f'Could not extract member {spec.member!r} of {url} to {folder}: '
            f'{e}. The archive is corrupt or truncated; retry, or obtain the '
            f'file elsewhere and put it at {folder / spec.name} by hand.') from e
    if not wanted:
      return
  raise DataError(
      f'The archive {url} has no member(s) '
      f'{", ".join(repr(s.member) for s in wanted.values())}. The source has '
      f'changed: obtain the files elsewhere and put them in {folder} by hand.')


def _download_archive_members(url: str, folder: pathlib.Path,
                              specs: Sequence[FileSpec], timeout: float) -> None:
  archive = folder / f'.{_archive_name(url)}.download'
  _download_file(url, archive, sha256=None, timeout=timeout)
  try:
    _extract_members(archive, url, folder, specs)
  finally:
    # The archive is only a vehicle for its members (simple-examples.tgz is
    # 34 MB); a corrupt one must not be reused either.
    archive.unlink(missing_ok=True)


def _verify_present(path: pathlib.Path, spec: FileSpec) -> None:
  if spec.sha256 is None:
    return
  actual = sha256_of(path)
  if actual != spec.sha256.lower():
    raise DataError(
        f'Checksum mismatch for {path}: expected sha256 {spec.sha256.lower()}, '
        f'got {actual}. The file is corrupt or a different version; delete it '
        f'(it is downloaded again) or replace it with the file from '
        f'{spec.source()}.')


def _missing_message(folder: pathlib.Path, missing: Sequence[FileSpec],
                     reason: str) -> str:
  listing = '\n'.join(f'  {folder / s.name}  ({s.source()})' for s in missing)
  return (f'{len(missing)} data file(s) missing from {folder} and {reason}:\n'
          f'{listing}\nPut these files in {folder} by hand. {_HOW_TO_POINT}')


def ensure_files(folder: str | os.PathLike, specs: Sequence[FileSpec],
                 download: bool = True, timeout: float = 30.0,
                 base_url_overrides: Mapping[str, str] | None = None
                 ) -> list[pathlib.Path]:
  """Returns the paths of `specs` in `folder`, verifying or downloading each.

  Files present are verified against their sha256 (when known). Absent files are
  downloaded when `download` is True: direct files straight to their place,
  archive members by downloading the archive once into `folder`, extracting just
  the members needed and verifying each.

  Args:
    folder: Dataset folder, e.g. `resolve_data_dir() / 'ptb'`.
    specs: The files wanted.
    download: Whether absent files may be downloaded.
    timeout: Seconds, passed to `download`.
    base_url_overrides: Canonical URL prefix -> replacement prefix; merged over
      the module-level `BASE_URL_OVERRIDES` (tests point it at a local server).

  Returns:
    The paths `folder / spec.name`, in the order of `specs`.

  Raises:
    DataError: A present or downloaded file fails verification, or files are
      absent and cannot be downloaded (the message names every missing file and
      the folder to put them in).
  """
  folder = pathlib.Path(folder)
  overrides = {**BASE_URL_OVERRIDES, **(base_url_overrides or {})}
  paths = [folder / spec.name for spec in specs]
  missing = []
  for path, spec in zip(paths, specs):
    if path.is_file():
      _verify_present(path, spec)
    else:
      missing.append(spec)
  if not missing:
    return paths
  if not download:
    raise DataError(_missing_message(
        folder, missing, 'downloading is off (download=False); pass '
        'download=True to fetch them'))
  unobtainable = [s for s in missing if s.url is None]
  if unobtainable:
    raise DataError(_missing_message(folder, missing,
                                     'no download source is known for some'))

  # Group by URL so an archive holding several wanted members is fetched once.
  by_url: dict[str, list[FileSpec]] = {}
  for spec in missing:
    by_url.setdefault(spec.url, []).append(spec)
  done: set[str] = set()
  for url, group in by_url.items():
    real_url = _apply_overrides(url, overrides)
    try:
      archived = [s for s in group if s.member is not None]
      if archived:
        _download_archive_members(real_url, folder, archived, timeout)
      for spec in group:
        if spec.member is None:
          _download_file(real_url, folder / spec.name, spec.sha256, timeout)
    except DownloadError as e:
      # Stop at the first failure: when the network is down every further attempt
      # would only wait out its own timeout.
      still_missing = [s for s in missing if s.name not in done]
      reason = f'could not be downloaded (fetching {e.url} failed: {e.reason})'
      raise DataError(_missing_message(folder, still_missing, reason)) from e
    done.update(s.name for s in group)
  return paths

