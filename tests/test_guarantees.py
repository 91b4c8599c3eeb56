"""The README's Guarantees name the tests that hold each promise: they exist."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_test_the_guarantees_name_exists():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", section))
    defined = set()
    tests = os.path.join(ROOT, "tests")
    for name in os.listdir(tests):
        if name.endswith(".py"):
            with open(os.path.join(tests, name)) as f:
                defined |= set(re.findall(r"^def (test_\w+)", f.read(), re.MULTILINE))
    assert len(named) >= 15 and named <= defined, sorted(named - defined)
