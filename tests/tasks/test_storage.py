"""Tests of tfcredit.tasks.storage: data directory, digests and verified downloads.

Downloads go to a real HTTP server on 127.0.0.1 that each test starts over a temp
folder; canonical URLs are redirected to it with `base_url_overrides`.
"""

import functools
import hashlib
import http.server
import io
import os
import pathlib
import socket
import tarfile
import threading
import zipfile

import pytest

from tfcredit.errors import DataError
from tfcredit.tasks import storage
from tfcredit.tasks.storage import FileSpec

CANONICAL = 'https://canonical.example.invalid/data/'


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    pass  # Keep the test output clean.


@pytest.fixture
def server(tmp_path, monkeypatch):
  """Serves tmp_path/'served' over HTTP; yields (folder, base URL)."""
  # A proxy from the environment must not intercept requests to 127.0.0.1.
  for name in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
  served = tmp_path / 'served'
  served.mkdir()
  handler = functools.partial(_QuietHandler, directory=str(served))
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  # A short poll interval keeps shutdown() (and so each test) fast.
  thread = threading.Thread(target=httpd.serve_forever, args=(0.02,),
                            daemon=True)
  thread.start()
  try:
    yield served, f'http://127.0.0.1:{httpd.server_address[1]}/'
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _closed_port_url() -> str:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  # Nothing listens there once the socket is closed: connections are refused.
  return f'http://127.0.0.1:{port}/'


def _files_in(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class TestResolveDataDir:

  def test_argument_wins(self, monkeypatch, tmp_path):
    monkeypatch.setenv('TFCREDIT_DATA_DIR', str(tmp_path / 'env'))
    assert storage.resolve_data_dir(tmp_path / 'arg') == tmp_path / 'arg'

  def test_environment(self, monkeypatch, tmp_path):
    monkeypatch.setenv('TFCREDIT_DATA_DIR', str(tmp_path / 'env'))
    assert storage.resolve_data_dir() == tmp_path / 'env'

  def test_default_under_home(self, monkeypatch, tmp_path):
    monkeypatch.delenv('TFCREDIT_DATA_DIR', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert storage.resolve_data_dir() == tmp_path / '.cache' / 'tfcredit'


def test_sha256_of_matches_hashlib(tmp_path):
  data = os.urandom(3 * (1 << 20) + 17)  # Several read chunks.
  path = tmp_path / 'blob'
  path.write_bytes(data)
  assert storage.sha256_of(path) == _digest(data)


class TestDownload:

  def test_direct_file_downloads_and_verifies(self, server, tmp_path):
    served, url = server
    (served / 'a.txt').write_bytes(b'alpha\n')
    target = tmp_path / 'out' / 'a.txt'
    path = storage.download(url + 'a.txt', target, sha256=_digest(b'alpha\n'))
    assert path == target and target.read_bytes() == b'alpha\n'
    assert _files_in(target.parent) == ['a.txt']  # No temporary file left.

  def test_mismatch_leaves_nothing(self, server, tmp_path):
    served, url = server
    (served / 'a.txt').write_bytes(b'tampered\n')
    expected = _digest(b'alpha\n')
    with pytest.raises(DataError) as info:
      storage.download(url + 'a.txt', tmp_path / 'out' / 'a.txt', sha256=expected)
    message = str(info.value)
    assert expected in message and _digest(b'tampered\n') in message
    assert url + 'a.txt' in message
    assert _files_in(tmp_path / 'out') == []

  def test_http_error_is_download_error(self, server, tmp_path):
    _, url = server
    target = tmp_path / 'out' / 'absent.txt'
    with pytest.raises(storage.DownloadError, match='failed') as info:
      storage.download(url + 'absent.txt', target)
    assert str(target) in str(info.value)
    assert _files_in(tmp_path / 'out') == []


class TestEnsureFiles:

  def test_direct_files(self, server, tmp_path):
    served, url = server
    contents = {'train.txt': b'a b c\n', 'test.txt': b'c b\n'}
    for name, data in contents.items():
      (served / name).write_bytes(data)
    specs = [FileSpec(name, _digest(data), url=CANONICAL + name)
             for name, data in contents.items()]
    folder = tmp_path / 'data' / 'tiny'
    paths = storage.ensure_files(folder, specs,
                                 base_url_overrides={CANONICAL: url})
    assert paths == [folder / 'train.txt', folder / 'test.txt']
    assert [p.read_bytes() for p in paths] == list(contents.values())
    assert _files_in(folder) == ['test.txt', 'train.txt']

  def test_module_level_override(self, server, tmp_path, monkeypatch):
    served, url = server
    (served / 'a.txt').write_bytes(b'alpha\n')
    monkeypatch.setitem(storage.BASE_URL_OVERRIDES, CANONICAL, url)
    spec = FileSpec('a.txt', _digest(b'alpha\n'), url=CANONICAL + 'a.txt')
    [path] = storage.ensure_files(tmp_path / 'd', [spec])
    assert path.read_bytes() == b'alpha\n'

  @pytest.mark.parametrize('archive_name', ['bundle.zip', 'bundle.tar.gz'])
  def test_archive_members(self, server, tmp_path, archive_name):
    served, url = server
    members = {'./bundle/data/x.txt': b'x data\n',
               './bundle/data/y.txt': b'y data\n',
               './bundle/data/unwanted.txt': b'not extracted\n'}
    if archive_name.endswith('.zip'):
      with zipfile.ZipFile(served / archive_name, 'w') as zf:
        for name, data in members.items():
          zf.writestr(name[2:], data)  # Zip names without './'.
    else:
      with tarfile.open(served / archive_name, 'w:gz') as tf:
        for name, data in members.items():
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tf.addfile(info, io.BytesIO(data))
    specs = [FileSpec(f'{s}.txt', _digest(members[f'./bundle/data/{s}.txt']),
                      url=CANONICAL + archive_name,
                      member=f'./bundle/data/{s}.txt') for s in ('x', 'y')]
    folder = tmp_path / 'data' / 'bundle'
    paths = storage.ensure_files(folder, specs,
                                 base_url_overrides={CANONICAL: url})
    assert [p.read_bytes() for p in paths] == [b'x data\n', b'y data\n']
    # Only the members asked for; the archive itself is removed.
    assert _files_in(folder) == ['x.txt', 'y.txt']

  def test_archive_member_mismatch(self, server, tmp_path):
    served, url = server
    with zipfile.ZipFile(served / 'b.zip', 'w') as zf:
      zf.writestr('b/x.txt', b'changed\n')
    expected = _digest(b'original\n')
    spec = FileSpec('x.txt', expected, url=CANONICAL + 'b.zip', member='b/x.txt')
    with pytest.raises(DataError, match=expected):
      storage.ensure_files(tmp_path / 'd', [spec],
                           base_url_overrides={CANONICAL: url})
    assert _files_in(tmp_path / 'd') == []

  def test_server_content_mismatch_leaves_no_file(self, server, tmp_path):
    served, url = server
    (served / 'a.txt').write_bytes(b'tampered\n')
    expected = _digest(b'alpha\n')
    spec = FileSpec('a.txt', expected, url=CANONICAL + 'a.txt')
    folder = tmp_path / 'd'
    with pytest.raises(DataError) as info:
      storage.ensure_files(folder, [spec], base_url_overrides={CANONICAL: url})
    assert expected in str(info.value)
    assert _files_in(folder) == []

  def test_unreachable_server_names_files_and_folder(self, tmp_path):
    specs = [FileSpec(name, None, url=CANONICAL + name)
             for name in ('one.txt', 'two.txt')]
    folder = tmp_path / 'data' / 'tiny'
    with pytest.raises(DataError) as info:
      storage.ensure_files(folder, specs, timeout=5.0,
                           base_url_overrides={CANONICAL: _closed_port_url()})
    message = str(info.value)
    assert str(folder / 'one.txt') in message
    assert str(folder / 'two.txt') in message
    assert f'Put these files in {folder}' in message
    assert '--data_dir' in message and 'TFCREDIT_DATA_DIR' in message
    assert _files_in(folder) == []

  def test_download_off_names_missing_files(self, tmp_path):
    spec = FileSpec('one.txt', None, url=CANONICAL + 'one.txt')
    with pytest.raises(DataError) as info:
      storage.ensure_files(tmp_path, [spec], download=False)
    message = str(info.value)
    assert str(tmp_path / 'one.txt') in message and 'download=True' in message
    assert 'TFCREDIT_DATA_DIR' in message

  def test_present_file_is_verified_not_downloaded(self, tmp_path):
    (tmp_path / 'a.txt').write_bytes(b'alpha\n')
    # A closed port: any download attempt would fail.
    spec = FileSpec('a.txt', _digest(b'alpha\n'), url=CANONICAL + 'a.txt')
    paths = storage.ensure_files(
        tmp_path, [spec], base_url_overrides={CANONICAL: _closed_port_url()})
    assert paths == [tmp_path / 'a.txt']

  def test_present_file_mismatch(self, tmp_path):
    path = tmp_path / 'a.txt'
    path.write_bytes(b'corrupt\n')
    expected = _digest(b'alpha\n')
    with pytest.raises(DataError) as info:
      storage.ensure_files(tmp_path, [FileSpec('a.txt', expected)])
    message = str(info.value)
    assert str(path) in message and expected in message
    assert _digest(b'corrupt\n') in message and 'delete' in message
    assert path.read_bytes() == b'corrupt\n'  # Never deleted behind the user.
