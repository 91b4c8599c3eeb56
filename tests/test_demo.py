import os
import re
import subprocess
import sys

from keras_npy import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_trains_on_files_it_wrote(tmp_path):
    result = demo.run_demo(num_samples=400, epochs=4, directory=str(tmp_path), verbose=0)
    assert result["num_samples"] == 400 and result["class_names"] == ["high", "low"]
    assert len(os.listdir(tmp_path / "low")) == 200
    # The classes' means differ by half a standard deviation, over 12 to 40 steps of 8.
    assert result["accuracy"] > 0.8 and result["val_accuracy"] > 0.8


def test_demo_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "keras_npy", "demo", "--samples", "200",
                           "--epochs", "1"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^Indexed 200 \.npy files in \['high', 'low'\] in [0-9.]+ s; trained 1 "
                     r"epochs in [0-9.]+ s; accuracy [0-9.]+, validation accuracy [0-9.]+\.$", done.stdout, re.M)


def _run_readme_example(heading, cwd):
    """Runs the first Python block after `heading` and checks each printed line against the
    comment on its `print(` line."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    code = re.search(rf"## {heading}\n.*?```python\n(.*?)```", readme, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = [re.search(r"# (.*)", line).group(1).split(";")[0]
                for line in code.splitlines() if line.startswith("print(")]
    assert done.stdout.splitlines() == expected


def test_readme_examples_run_and_print_what_they_say(tmp_path):
    _run_readme_example("Quickstart", tmp_path)
    _run_readme_example("Preprocessing that ships with the model", tmp_path)  # uses data/


def test_ci_runs_the_readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    commands = re.findall(r"^python3 -m venv .*$", readme, re.M)
    assert len(commands) == 2
    assert commands[1] in ci.splitlines()  # the test command, verbatim
