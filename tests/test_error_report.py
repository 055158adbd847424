"""After a user error is reported, the asyncio noise of the same failure stays out of stderr."""
import asyncio
import gc
import logging

from cm_jax import cli
from cm_jax.errors import UserError


def _abandon_a_failed_task():
  async def sibling_read():
    raise RuntimeError("a sibling read failed too")
  loop = asyncio.new_event_loop()
  task = loop.create_task(sibling_read())
  loop.run_until_complete(asyncio.sleep(0.01))
  del task
  gc.collect()  # asyncio logs "Task exception was never retrieved" when the task is collected
  loop.close()


def test_unretrieved_task_exceptions_are_quiet_after_a_reported_user_error(caplog, capsys):
  # An earlier in-process CLI test of the same worker may have reported a user error already.
  logging.getLogger("asyncio").disabled = False
  caplog.set_level(logging.ERROR, logger="asyncio")
  _abandon_a_failed_task()
  assert "never retrieved" in caplog.text  # what a loaded machine printed after the error line
  caplog.clear()
  try:
    assert cli.report_user_error(UserError("Could not restore step 4")) == cli.EXIT_USER_ERROR
    _abandon_a_failed_task()
  finally:
    logging.getLogger("asyncio").disabled = False
  assert "never retrieved" not in caplog.text
  assert capsys.readouterr().err == "error: Could not restore step 4\n"
