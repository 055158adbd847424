"""Data ~ N(0, s^2 I), where the denoiser, the PF-ODE and the consistency function are closed forms.

D(x, sigma) = x s^2 / (s^2 + sigma^2); the ODE is linear, x_sigma = x_eps sqrt(s^2 + sigma^2) /
sqrt(s^2 + eps^2), so f(x, sigma) = alpha(sigma) x, alpha = sqrt(s^2 + eps^2) / sqrt(s^2 + sigma^2).
The model families below are linear in x and contain these exactly; `train` fits one by a loss.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cm_jax import karras
from configs import base

S = 0.5                    # data standard deviation
SHAPE = (4, 4, 1)          # d = 16 per sample
LEVELS = karras.NoiseLevels()


def exact_alpha(sigma):
  eps = LEVELS.sigma_min
  return np.sqrt(S**2 + eps**2) / np.sqrt(S**2 + np.asarray(sigma) ** 2)


def exact_denoiser(x, sigma):
  return x * S**2 / (S**2 + karras.per_sample(sigma, x) ** 2)


def alpha_of(params, net, sigma):
  """The learned f(x, sigma) / x, read off by evaluating the consistency function."""
  x = jnp.ones((len(sigma),) + SHAPE)
  f = karras.consistency_function(lambda xi, noise: net(params, xi, noise, None, False, None), x,
                                  jnp.asarray(sigma, jnp.float32), LEVELS)
  return np.asarray(f[:, 0, 0, 0])


def table_net(n_levels):
  """F = g[level] x_in with one free gain per grid level (looked up by the nearest c_noise):
  every per-level linear map, so a discrete fixed point on the grid is in the family exactly."""
  knots = jnp.asarray(karras.c_noise(karras.karras_sigmas(n_levels, LEVELS)), jnp.float32)
  def net(params, x_in, noise, labels, train, rng):
    level = jnp.argmin(jnp.abs(noise[:, None] - knots[None, :]), axis=1)
    return params["g"][level][:, None, None, None] * x_in
  return net, {"g": jnp.zeros((n_levels,), jnp.float32)}


def _variance_net(scalings, ratio):
  """F such that the wrapper with `scalings` gives ratio(v, sigma) x, v = exp(log_v) learned."""
  def net(params, x_in, noise, labels, train, rng):
    sigma = jnp.exp(4.0 * noise)  # inverts c_noise = 0.25 ln sigma
    c_skip, c_out = scalings(sigma, LEVELS)
    target = ratio(jnp.exp(params["log_v"]), sigma)
    safe = jnp.where(c_out > 0, c_out * karras.c_in(sigma, LEVELS), 1.0)
    g = jnp.where(c_out > 0, (target - c_skip) / safe, 0.0)
    return g[:, None, None, None] * x_in
  return net, {"log_v": jnp.asarray(np.log(1.0), jnp.float32)}


def variance_net():
  """Consistency family f = sqrt(v + eps^2) / sqrt(v + sigma^2) x: exact at v = s^2."""
  return _variance_net(karras.consistency_scalings,
                       lambda v, s: jnp.sqrt(v + LEVELS.sigma_min**2) / jnp.sqrt(v + s**2))


def variance_denoiser_net():
  """Denoiser family D = v / (v + sigma^2) x (with the EDM scalings): exact at v = s^2."""
  return _variance_net(karras.denoiser_scalings, lambda v, s: v / (v + s**2))


def config_for(method, num_steps, **consistency):
  c = base.get_base_config()
  c.method = method
  c.train.num_steps = num_steps
  c.consistency.update(consistency)
  return c


def train(method, params, steps, lr, batch=512, seed=0, frozen=None):
  """Adam with a decaying rate, fresh data every step; `frozen` is passed to the loss (CD)."""
  tx = optax.adam(optax.exponential_decay(lr, steps, 0.01))
  target = params if method.has_target_network else None

  def step(carry, k):
    params, target, opt_state = carry
    # Independent keys for the data and the loss: fold_in(key, 1) equals split(key, 3)[1].
    data_key, key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), k))
    x = S * jax.random.normal(data_key, (batch,) + SHAPE)
    grads = jax.grad(lambda p: method.loss(p, target, {"image": x}, key, k, frozen)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, method.update_target(target, params, k), opt_state), None

  (params, _, _), _ = jax.lax.scan(step, (params, target, tx.init(params)), jnp.arange(steps))
  return params
