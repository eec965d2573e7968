"""The runnable docstring examples (``>>>``) of the issue-17 methods, run as doctests."""

import doctest

import pytest

from aniso_gp import hypergrad
from aniso_gp.hypergrad import solvers, tuning
from aniso_gp.linalg import streaming


@pytest.mark.parametrize("obj", [streaming.nystrom_eigen, solvers.AmortizedEigenbasis,
                                 tuning.hyperparameter_influence],
                         ids=lambda o: o.__name__)
def test_docstring_example_runs(obj):
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(obj, globs={"hypergrad": hypergrad})
    assert tests and tests[0].examples, f"{obj.__name__} has no >>> example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
