r"""Hypergradients by implicit differentiation (docs/design.md section 5).

Implicit function theorem
-------------------------
Inner problem ``w*(h) = argmin_w f(w, h)`` with ``w`` any pytree (flattened to
``R^n`` for the linear algebra), outer loss ``g(w, h)``. Stationarity
``grad_w f(w*(h), h) = 0`` gives ``dw*/dh = -H^{-1} d_h grad_w f`` with the
Hessian ``H = d_w^2 f`` (n, n), so

.. math::
    \frac{dg}{dh} = \partial_h g - (\partial_h \nabla_w f)^T u, \qquad u = H^{-1} \nabla_w g .

The product ``(d_h grad_w f)^T u`` is one vector-Jacobian product of
``h -> <grad_w f(w*, h), u>`` with ``u`` held fixed; ``u`` is one inverse
Hessian-vector product (iHVP). Hessian-vector products ``H v`` are
forward-over-reverse (``jax.linearize`` of ``grad_w f``): ``H`` is never formed
unless :class:`Exact` asks for it.

iHVP solvers (values, hashable, usable as ``jit`` static arguments)
-------------------------------------------------------------------
=====================  ==================================================  =====================
solver                 ``u ~ H^{-1} b``                                    HVPs
=====================  ==================================================  =====================
``Exact()``            dense Cholesky (jitter only via ``linalg.dense``)   ``n`` (0 given ``H``)
``CG(maxiter, tol)``   conjugate gradients                                 iterations + 1
``Neumann(steps,lr)``  ``lr sum_{t<T} (I - lr H)^t b``                      ``T`` + 1
``Nystrom(k, rho)``    ``(H_k + rho I)^{-1} b``, Hataya & Yamada (2023)    ``k`` + 1
``NystromPCG(k,..)``   CG preconditioned by a rank-``k`` Nystrom factor    ``k`` + iterations + 1
  ``sketch="kernel"``  the factor from ``k`` kernel columns (GP systems)    iterations + 1
``NystromRichardson``  ASTRA-style: Richardson / Neumann steps, Nystrom     ``k`` + 21 + iter. + 1
                       preconditioner, stopped at ``tol``
``SpectralReuse``      NystromPCG keeping its basis across outer steps      p (+k) + iter. + 1
``AmortizedEigen..``   NystromPCG whose basis is trained by an eigen loss   ``steps k`` + iter. + 1
  ``basis``            (``AmortizedEigenbasis``; QR retraction, no refresh)
``Auto()``             ``Exact`` up to :data:`AUTO_DENSE_MAX`, else NystromPCG
=====================  ==================================================  =====================

The "+ 1" is the true residual ``|b - H u| / |b|``, which every solver reports
in :class:`IHVPInfo` (approximate solvers are never silently trusted);
``Auto()`` (``solver="auto"``) also warns when it ends above its tolerance.

Each value carries its behaviour, as lineax's solvers do: ``state =
solver.init(Operator(matvec, n, shift, ...), key=, carry=)`` prepares a factor
or preconditioner for one operator and ``solver.compute(state, b, x0=)`` solves
one right-hand side with it (several solves with one ``H`` share it).
:func:`solve_ihvp` is that pair for one right-hand side and returns one record,
:class:`IHVPSolution` ``(value, info, state)``, whatever the solver.

Nystrom-Woodbury in eigen-form. With sketch ``Omega`` (n, k) (``k`` coordinate
columns ``E_idx`` as in Hataya & Yamada, or Gaussian), ``Y = H Omega`` (k HVPs)
and core ``M = Omega^T Y`` (k, k), the Nystrom approximation is
``H_k = Y M^+ Y^T``. Eigendecompose ``M = V diag(sigma) V^T``, drop
``sigma <= k eps sigma_max``, set ``F = Y V sigma^{-1/2}`` (every column of
``F`` is bounded by ``|H|^{1/2}``: no amplification) and take the thin SVD
``F = U S Z^T``; then ``H_k = U diag(S^2) U^T`` with ``U`` orthonormal and

.. math:: (H_k + \rho I)^{-1} b = U (S^2 + \rho)^{-1} U^T b + (b - U U^T b)/\rho ,

with no ``1/rho`` cancellation: the published form ``b/rho - C^T (rho M + C C^T)^{-1}
C b / rho`` (``C`` the k sketched rows) subtracts two ``O(|b|/rho)`` terms, and
where the sketch captures most of ``H`` the difference is ``O(|b|/lambda)``:
about ``log10(lambda/rho)`` digits are lost (``benchmarks/hypergrad_solvers.py``,
GP system at n = k = 1,000, rho = 1e-10: 0.2 relative error, eigen-form 4e-9).
When the caller knows a shift ``H = A + mu I`` (the GP system ``K + s^2 I``),
only ``A`` is sketched and ``H_k = A_k + mu I``, so the damping ``rho`` comes on
top of ``mu``. It is an approximation, not a solver: on a captured eigen-direction
the relative error is ``rho / (lambda_i + rho)``, on a missed one the component
is scaled by ``lambda_j / rho`` instead of 1 (so ``rho`` must sit near the
spectral tail). :class:`NystromPCG` uses the same factor as a preconditioner
(unbiased, converges to the CG tolerance).

Spectral reuse across outer steps
---------------------------------
:class:`SpectralReuse` keeps the Nystrom basis ``Q`` (n, k) between outer steps.
Each step it measures ``B = Q^T A Q`` (``A`` the operator that was sketched)
with ``p`` Rademacher probes ``z``: ``y = A Q z`` (p HVPs), ``B z = Q^T y``, the
Hutchinson diagonal ``d = mean(z * Bz)`` (corrected eigenvalues), the in-span
staleness ``|B - diag B|_F`` and the energy outside ``span(Q)``,
``|(I - Q Q^T) A Q|_F``. Together they estimate the relative eigen-residual

.. math:: s = \frac{|A Q - Q\,\mathrm{diag}(d)|_F}{|A Q|_F}
            = \frac{\sqrt{|B - \mathrm{diag} B|_F^2 + |(I - QQ^T) A Q|_F^2}}{|AQ|_F}

A fresh randomized sketch is itself not an exact eigenbasis (``s`` is far from
0 for flat spectra), so the criterion is the *drift* since the last refresh:
with ``s_ref`` the value first measured after it, the basis is re-sketched only
when ``sqrt(s^2 - s_ref^2) > tau`` (Shampoo's criterion has ``s_ref = 0``
because its eigendecomposition is exact). A refresh sketches with the old basis
as its test matrix (``Y = A Q``, one step of subspace iteration), so the basis
also improves across refreshes. ``probes=None`` computes
``B`` exactly (k HVPs, as expensive as a fresh sketch). The stale basis only
preconditions CG (which still converges to its tolerance); it never defines a
loss (docs/design.md section 4).

GP applications
---------------
:func:`optimize_hyperparameters`: validation-loss tuning of kernel
hyperparameters ``theta``; inner problem the kernel-ridge / GP weight solve
``f(w) = 1/2 w^T (K + s^2 I) w - y^T w`` (``H = K + s^2 I``, ``w* = H^{-1} y``,
validation mean ``K_vt w*``). :func:`laplace_log_marginal`: Laplace
approximation with Poisson (log link) or Student-t likelihood, the mode found by
Newton in whitened coordinates and differentiated implicitly.

Modules: :mod:`~aniso_gp.hypergrad.solvers` (solver values, iHVPs, Nystrom
factors), :mod:`~aniso_gp.hypergrad.implicit` (implicit differentiation),
:mod:`~aniso_gp.hypergrad.tuning` (GP hyperparameters on a validation loss),
:mod:`~aniso_gp.hypergrad.laplace` (Laplace GP). Every function works in float64.
"""

from aniso_gp.hypergrad.implicit import (
    INFO_SINK_FIELDS,
    Hypergradient,
    ImplicitSolution,
    implicit_grad,
    implicit_solution,
)
from aniso_gp.hypergrad.laplace import (
    LAPLACE_LIKELIHOODS,
    LaplaceMode,
    laplace_log_marginal,
    laplace_mode,
    laplace_value_and_grad,
    log_likelihood,
)
from aniso_gp.hypergrad.laplace import LAPLACE_LIKELIHOODS as LIKELIHOODS  # former name
from aniso_gp.hypergrad.solvers import (
    AUTO_DENSE_MAX,
    CG,
    AmortizedEigenbasis,
    Auto,
    Exact,
    IHVPInfo,
    IHVPSolution,
    Neumann,
    Nystrom,
    NystromPCG,
    NystromRichardson,
    Operator,
    ReuseState,
    SolveError,
    SolverState,
    SpectralReuse,
    as_solver,
    hessian_nystrom,
    kernel_nystrom,
    resolve_solver,
    solve_ihvp,
)
from aniso_gp.hypergrad.tuning import (
    gp_params,
    hyperparameter_influence,
    optimize_hyperparameters,
    validation_hypergradient,
)
from aniso_gp.kernels import kernel_apply

__all__ = [
    "AUTO_DENSE_MAX",
    "CG",
    "Auto",
    "Exact",
    "Hypergradient",
    "IHVPInfo",
    "IHVPSolution",
    "INFO_SINK_FIELDS",
    "ImplicitSolution",
    "LAPLACE_LIKELIHOODS",
    "LIKELIHOODS",
    "LaplaceMode",
    "Neumann",
    "Nystrom",
    "NystromPCG",
    "NystromRichardson",
    "Operator",
    "ReuseState",
    "SolveError",
    "SolverState",
    "SpectralReuse",
    "AmortizedEigenbasis",
    "as_solver",
    "gp_params",
    "hyperparameter_influence",
    "implicit_grad",
    "implicit_solution",
    "kernel_apply",
    "laplace_log_marginal",
    "laplace_mode",
    "laplace_value_and_grad",
    "log_likelihood",
    "hessian_nystrom",
    "kernel_nystrom",
    "optimize_hyperparameters",
    "resolve_solver",
    "solve_ihvp",
    "validation_hypergradient",
]
