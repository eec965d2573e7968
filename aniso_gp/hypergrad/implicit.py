r"""Implicit differentiation: :func:`implicit_grad` and :class:`ImplicitSolution`
(``dg/dh = d_h g - (d_h grad_w f)^T H^{-1} grad_w g``; package docstring).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from aniso_gp.hypergrad.solvers import (
    IHVPInfo,
    _all_finite,
    _info,
    _require,
    as_solver,
    plain_errors,
    solve_ihvp,
)


class Hypergradient(NamedTuple):
    """The result of :func:`implicit_grad`.

    Attributes:
        grad: ``dg/dh``, shaped like ``h``.
        info: :class:`IHVPInfo` of the one iHVP.
        state: the :class:`ReuseState` to pass on (:class:`SpectralReuse`), else ``None``.
    """

    grad: Any
    info: IHVPInfo
    state: Any = None


# --------------------------------------------------------------------------- #
# Generic implicit differentiation
# --------------------------------------------------------------------------- #
def _flat_inner_grad(inner_loss, unravel):
    def grad_w(w_flat, h, *args):
        return ravel_pytree(jax.grad(inner_loss)(unravel(w_flat), h, *args))[0]

    return grad_w


def _ift_adjoint(inner_loss, w_star, h, args, w_bar, solver, key=None, state=None):
    """``u = H^{-1} w_bar`` and the cotangents ``-(d_{h,args} grad_w f)^T u``."""
    w_flat, unravel = ravel_pytree(w_star)
    b = ravel_pytree(w_bar)[0].astype(w_flat.dtype)
    b = _require(b, _all_finite(b), "the gradient of the outer loss w.r.t. w is not finite")
    grad_w = _flat_inner_grad(inner_loss, unravel)
    # linearize evaluates grad_w once; every HVP then costs one forward-mode pass.
    _, hvp = jax.linearize(lambda wf: grad_w(wf, h, *args), w_flat)
    solution = solve_ihvp(solver, hvp, b, key=key, state=state)
    _, vjp = jax.vjp(lambda hh, aa: grad_w(w_flat, hh, *aa), h, tuple(args))
    h_bar, args_bar = vjp(-solution.value)
    return h_bar, args_bar, solution


@plain_errors
def implicit_grad(inner_loss, outer_loss, w_star, h, solver="auto", *, key=None,
                  state=None) -> Hypergradient:
    r"""Hypergradient ``dg/dh`` at an inner minimiser, by the implicit function theorem.

    ``dg/dh = d_h g - (d_h grad_w f)^T H^{-1} grad_w g`` (module docstring).

    Args:
        inner_loss: ``f(w, h) -> scalar``; ``w_star`` minimises it at ``h``.
        outer_loss: ``g(w, h) -> scalar``.
        w_star: the inner solution, any pytree of float arrays (flattened to n).
        h: hyperparameters, any pytree of float arrays.
        solver: iHVP solver value or ``"auto"``.
        key: PRNG key for randomized sketches.
        state: :class:`ReuseState` to carry between calls with :class:`SpectralReuse`.

    Returns:
        A :class:`Hypergradient` ``(grad, info, state)``: ``dg/dh`` shaped like
        ``h``, the :class:`IHVPInfo` and the state to pass on.
    """
    _check_losses(w_star, h, inner_loss=inner_loss, outer_loss=outer_loss)
    g_w, g_h = jax.grad(outer_loss, argnums=(0, 1))(w_star, h)
    h_bar, _, solution = _ift_adjoint(inner_loss, w_star, h, (), g_w, solver, key=key,
                                      state=state)
    dg = jax.tree_util.tree_map(lambda a, c: a + c, g_h, h_bar)
    return Hypergradient(dg, solution.info, solution.state)


def _check_losses(w_star, h, **losses) -> None:
    """Each loss is a function of ``(w_star, h)`` returning a real scalar (checked by
    tracing it once, without computing anything)."""
    for name, f in losses.items():
        if not callable(f):
            raise ValueError(f"`{name}` must be a function (w, h) -> scalar; got "
                             f"{type(f).__name__}")
        try:
            out = jax.eval_shape(f, w_star, h)
        except Exception as err:  # whatever the user's function raises on these inputs
            raise ValueError(f"`{name}`(`w_star`, `h`) cannot be evaluated: "
                             f"{type(err).__name__}: {' '.join(str(err).split())[:300]} "
                             "(w_star and h must be arrays or pytrees of arrays)") from None
        if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"`{name}` must return a real scalar; it returns "
                             f"{getattr(out, 'shape', out)}")


#: Order of the entries in an info sink (see :class:`ImplicitSolution`).
INFO_SINK_FIELDS = IHVPInfo._fields


class ImplicitSolution:
    r"""``h -> w*(h)`` with an implicit-function-theorem VJP (made by :func:`implicit_solution`).

    ``sol(h, *args)`` returns ``inner_solver(h, *args)``; under ``jax.grad`` its
    cotangent ``w_bar`` becomes ``-(d_{h,args} grad_w f)^T H^{-1} w_bar`` (one
    iHVP), never differentiating through the inner solver. ``args`` are extra
    arrays (data) passed to both ``inner_solver`` and ``inner_loss``; they get
    implicit cotangents too, so nothing needs to be closed over.

    The iHVP's :class:`IHVPInfo` comes out through an *info sink*: call
    ``sol.with_sink(h, sink, *args)`` with ``sink = sol.sink()`` and
    differentiate with respect to ``sink`` too; its "gradient" holds
    ``(matvecs, residual_norm, iterations)``, read back by :meth:`info`. With one
    call per outer objective that is the record of its one solve (several calls
    add up). A :class:`SpectralReuse` solver here starts from a fresh sketch on
    every call (its state cannot leave a VJP); carry the state with
    :func:`implicit_grad` instead.
    """

    def __init__(self, inner_solver, inner_loss, solver="auto"):
        solver = as_solver(solver)
        self.inner_solver = inner_solver
        self.inner_loss = inner_loss
        self.solver = solver

        @jax.custom_vjp
        def core(h, sink, args):
            return inner_solver(h, *args)

        def fwd(h, sink, args):
            w = inner_solver(h, *args)
            return w, (w, h, args)

        def bwd(res, w_bar):
            w, h, args = res
            h_bar, args_bar, solution = _ift_adjoint(inner_loss, w, h, args, w_bar, solver)
            sink_bar = jnp.stack([jnp.asarray(v, jnp.float64) for v in solution.info])
            return h_bar, sink_bar, args_bar

        core.defvjp(fwd, bwd)
        self._core = core

    @staticmethod
    def sink() -> jnp.ndarray:
        """A zero info sink, shape ``(len(INFO_SINK_FIELDS),)``."""
        return jnp.zeros((len(INFO_SINK_FIELDS),))

    @staticmethod
    def info(sink_grad) -> IHVPInfo:
        """The :class:`IHVPInfo` carried by the gradient of a sink."""
        s = jnp.asarray(sink_grad)
        return _info(s[0], s[1], s[2])

    def __call__(self, h, *args):
        return self._core(h, self.sink(), tuple(args))

    def with_sink(self, h, sink, *args):
        return self._core(h, sink, tuple(args))


def implicit_solution(inner_solver, inner_loss, solver="auto") -> ImplicitSolution:
    r"""Wrap ``inner_solver(h, *args) -> w*`` so that ``jax.grad`` goes through the IFT.

    Args:
        inner_solver: ``(h, *args) -> w*`` minimising ``inner_loss`` (any pytree;
            not differentiated through, may contain while loops).
        inner_loss: ``(w, h, *args) -> scalar``.
        solver: iHVP solver value or ``"auto"``.

    Returns:
        An :class:`ImplicitSolution`, callable as ``w_star = sol(h, *args)`` inside
        any outer objective; works under ``jax.grad`` and ``jax.jit``.

    Example::

        sol = implicit_solution(ridge_solve, ridge_loss, CG(200, 1e-10))
        val_loss = lambda h: outer(sol(h, X, y), h)
        jax.jit(jax.grad(val_loss))(h)
    """
    return ImplicitSolution(inner_solver, inner_loss, solver)
