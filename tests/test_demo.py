import os
import re
import subprocess
import sys

from keras_npy import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_trains_exports_and_serves(tmp_path):
    result = demo.run_demo(num_samples=400, epochs=4, directory=str(tmp_path), verbose=0)
    assert result["num_samples"] == 400 and result["class_names"] == ["high", "low"]
    assert len(os.listdir(tmp_path / "data" / "low")) == 200
    # The classes' means differ by a fifth of a standard deviation, over 12 to 40 steps of 8.
    for name in ("NpyDataset", "npy_dataset"):
        assert result[name]["accuracy"] > 0.75 and result[name]["val_accuracy"] > 0.75, name
    assert result["served_samples"] == 80 and result["served_accuracy"] > 0.75
    assert result["served_max_difference"] < 1e-5


def test_demo_command(tmp_path):
    """The README's first command, `python -m keras_npy demo`, with fewer samples."""
    done = subprocess.run([sys.executable, "-m", "keras_npy", "demo", "--samples", "200",
                           "--epochs", "2"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    number = r"[0-9.]+"
    assert re.search(rf"^Indexed 200 \.npy files of 12 to 40 steps in \['high', 'low'\] in "
                     rf"{number} s \(headers and training-set statistics\)\.\n"
                     rf"NpyDataset: 2 epochs in {number} s \([0-9,]+ samples/s after the first "
                     rf"epoch, which took {number} s with Keras' tracing\); accuracy {number}, "
                     rf"validation accuracy {number}\.\n"
                     rf"npy_dataset: 2 epochs in .*\n"
                     rf"Exported with PadOrTrim and Normalization inside, reloaded with "
                     rf"tf.saved_model.load: 40 raw, unpadded validation files classified with "
                     rf"accuracy {number}; largest difference from the Keras model's probability "
                     rf"\S+\.$", done.stdout, re.M), done.stdout
    # TensorFlow's start-up notices (oneDNN, CPU features) are logged while it loads,
    # before it reads TF_CPP_MIN_LOG_LEVEL; the command holds them back.
    notices = [line for line in done.stderr.splitlines()
               if "absl::InitializeLog" in line or re.match(r"[IW]\d{4} [0-9:.]+ +\d+ ", line)]
    assert notices == [], notices


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
