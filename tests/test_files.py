"""Atomic writes leave the file a plain open() would: the content and the umask's mode."""
import os
import stat

from cm_jax import files


def test_atomic_write_replaces_the_file_with_the_umask_mode(tmp_path):
  path = tmp_path / "out" / "a.json"
  files.write_json_atomically(str(path), {"a": 1})
  files.write_json_atomically(str(path), {"a": 2})
  assert path.read_text().replace(" ", "").replace("\n", "") == '{"a":2}'
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~files._UMASK
  with open(tmp_path / "plain", "w"):
    pass
  assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
  assert sorted(os.listdir(path.parent)) == ["a.json"]  # no temporary left behind
