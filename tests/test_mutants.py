"""scripts/mutants.py stays in step with the code: every planted bug still finds the one
line it replaces (running the mutants themselves takes minutes: README.md, Tests)."""

from conftest import load_script


def test_every_mutant_still_finds_the_line_it_replaces():
    mutants = load_script("mutants")
    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names)) >= 25
    for mutant in mutants.MUTANTS:
        mutants.check_applies(mutant)
        assert mutant.replacement != mutant.original and mutant.tests, mutant.name
