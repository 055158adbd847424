"""Every method provides the Method contract, and its MethodSpec is the one table of facts."""
import jax
import pytest

from cm_jax import methods, models
from cm_jax.methods.contract import Method, MethodSpec
from configs import base, digits


@pytest.mark.parametrize("name", methods.NAMES)
def test_each_method_is_a_method_with_a_consistent_spec(name):
  config = digits.get_config(f"method={name},runlocal")
  method = methods.create_method(config, models.make_net(models.create_model(config.model, config.data)),
                                 models.sample_shape(config.data))
  assert isinstance(method, Method)
  spec = methods.spec(name)
  assert isinstance(method.extra_params(jax.random.PRNGKey(0)), dict)
  # A method that queries a teacher in its loss must name which one it takes.
  assert not method.uses_teacher or spec.teacher == "required"
  assert (spec.teacher == "none") == (spec.teacher_method is None)


def test_the_configs_list_the_registered_methods():
  assert base.METHODS == methods.NAMES
  assert set(methods.DENOISERS) == {"edm", "trigflow"}
  assert set(methods.TRIGFLOW) == {"trigflow", "sct", "scd"}
  assert [n for n, s in methods.SPECS.items() if s.is_flow] == ["meanflow"]
  assert methods.OPTIONAL_TEACHERS == {"ct": "edm"}


def test_a_spec_with_an_unknown_kind_or_a_teacher_without_its_method_is_refused():
  with pytest.raises(ValueError, match="kind"):
    MethodSpec("x", lambda *a: None, "flow", "sigma")
  with pytest.raises(ValueError, match="teacher_method"):
    MethodSpec("x", lambda *a: None, "consistency", "sigma", teacher="required")


def test_an_unknown_method_is_a_user_error():
  with pytest.raises(ValueError, match="this version has ct, ict"):
    methods.spec("nosuch")
