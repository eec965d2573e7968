"""Write a small saved fit with the ArviZ line of this interpreter (tests/test_saved_fits.py).

    python tests/data/saved_fits/make_fixture.py   # writes arviz<major>/ beside this file

A tiny rotated point fit (60 points, 2 chains of 60 draws), saved by ``Fit.save``,
and ``expected.json``: the posterior numbers that a later version must read back.
"""

import json
import sys
from pathlib import Path

import arviz

import aniso_gp

HERE = Path(__file__).resolve().parent


def main() -> int:
    line = int(arviz.__version__.split(".")[0])
    field = aniso_gp.synthetic_field(60, (0.6, 0.3, 0.15), (0.4, -0.2, 0.7), noise_sd=0.1,
                                     seed=5)
    fit = aniso_gp.fit(field.X, field.y, num_chains=2, num_warmup=60, num_samples=60, seed=0,
                       progress=False)
    out = HERE / f"arviz{min(line, 1)}"
    fit.save(out, overwrite=True)
    table = fit.orientation()
    expected = {
        "arviz": arviz.__version__,
        "python": sys.version.split()[0],
        "l_median": table["l_median"].tolist(),
        "axes": table[["dir_x", "dir_y", "dir_z"]].to_numpy().tolist(),
        "lengthscale_draws_sum": float(fit.lengthscale_draws().sum()),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
