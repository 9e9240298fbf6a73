"""tests/system_tools.sh, which `make test` runs before it installs anything: as root on
Debian/Ubuntu it installs what is missing with apt-get; elsewhere it names each missing
tool on one line and fails. Each test runs it on a fake machine: a PATH holding only fake
`id`, `uname`, `apt-get`, `dot` and Pythons, and a fake /etc/os-release and
/usr/bin/chromium under SYSTEM_TOOLS_ROOT.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "system_tools.sh"
CHROMIUM = "#!/bin/sh\necho 'Chromium 120.0'\n"
# What Ubuntu's chromium package installs: a wrapper asking for the snap.
SNAP_WRAPPER = ("#!/bin/sh\necho \"Command '/usr/bin/chromium' requires the chromium snap to "
                "be installed.\" >&2\nexit 1\n")
# Records its arguments; "installs" graphviz and chromium as the real one would.
APT_GET = """#!{python}
import sys
from pathlib import Path

with open({log!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if "install" in sys.argv:
    for package, path, text in (("graphviz", {dot!r}, "#!/bin/sh\\n"),
                                ("chromium", {chromium!r}, {chromium_text!r})):
        if package in sys.argv:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
            Path(path).chmod(0o755)
"""


def executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


class Machine:
    """A fake machine in tmp_path; run() runs the checker on it."""

    def __init__(self, tmp_path, distro="debian", uid=1000, kernel="Linux", python="3.11"):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.root = tmp_path / "root"
        self.chromium = self.root / "usr" / "bin" / "chromium"
        self.apt_log = tmp_path / "apt-get.log"
        executable(self.bin / "id", f"#!/bin/sh\necho {uid}\n")
        executable(self.bin / "uname", f"#!/bin/sh\necho {kernel}\n")
        executable(self.bin / "python3", f"#!/bin/sh\necho {python}\n")
        if distro:
            (self.root / "etc").mkdir(parents=True)
            (self.root / "etc" / "os-release").write_text(f"ID={distro}\n")
        # Ubuntu's package is the snap wrapper, Debian's a browser.
        chromium_text = SNAP_WRAPPER if distro == "ubuntu" else CHROMIUM
        executable(self.bin / "apt-get", APT_GET.format(
            python=sys.executable, log=str(self.apt_log), dot=str(self.bin / "dot"),
            chromium=str(self.chromium), chromium_text=chromium_text))

    def add_dot(self):
        executable(self.bin / "dot", "#!/bin/sh\n")

    def run(self):
        result = subprocess.run(
            ["/bin/sh", str(SCRIPT), str(self.bin / "python3"), str(self.tmp / ".venv"),
             str(self.tmp / ".venv-serving-compat")],
            env={"PATH": str(self.bin), "SYSTEM_TOOLS_ROOT": str(self.root),
                 "HOME": str(self.tmp)},
            cwd=self.tmp, capture_output=True, text=True, timeout=60)
        return result.returncode, result.stdout, result.stderr.splitlines()

    def apt_calls(self):
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []


def test_a_user_without_apt_rights_gets_one_line_per_missing_tool(tmp_path):
    machine = Machine(tmp_path, uid=1000)
    returncode, stdout, lines = machine.run()
    assert returncode == 1
    assert stdout == ""
    assert len(lines) == 2, lines
    assert lines[0].startswith("make test needs Graphviz's dot")
    assert "apt-get install graphviz" in lines[0]
    assert lines[1].startswith("make test needs a Chromium for Playwright")
    assert "apt-get install chromium" in lines[1] and "playwright install chromium" in lines[1]
    assert machine.apt_calls() == []  # never installs without root


def test_root_on_debian_installs_both_with_apt_get(tmp_path):
    machine = Machine(tmp_path, uid=0)
    returncode, stdout, lines = machine.run()
    assert (returncode, lines) == (0, [])
    assert stdout == "make test: installing graphviz chromium with apt-get (root on debian)\n"
    assert machine.apt_calls() == ["update -qq", "install -y -qq graphviz chromium"]


def test_root_on_ubuntu_installs_graphviz_and_names_playwrights_chromium(tmp_path):
    machine = Machine(tmp_path, distro="ubuntu", uid=0)
    returncode, _, lines = machine.run()
    assert machine.apt_calls() == ["update -qq", "install -y -qq graphviz"]
    assert returncode == 1
    assert len(lines) == 1, lines
    assert "snap" in lines[0] and "playwright install chromium" in lines[0]


def test_a_chromium_that_does_not_start_counts_as_missing(tmp_path):
    machine = Machine(tmp_path, distro="ubuntu", uid=1000)
    machine.add_dot()
    executable(machine.chromium, SNAP_WRAPPER)
    returncode, _, lines = machine.run()
    assert returncode == 1
    assert len(lines) == 1 and lines[0].startswith("make test needs a Chromium"), lines


def test_playwrights_own_chromium_is_enough(tmp_path):
    machine = Machine(tmp_path, uid=0)
    machine.add_dot()
    # The venv's Python answers for tests/browser.py, which finds Playwright's browser.
    executable(tmp_path / ".venv" / "bin" / "python",
               '#!/bin/sh\ncase "$1" in */browser.py) echo /somewhere/chrome ;;\n'
               '*) exit 1 ;; esac\n')
    assert machine.run() == (0, "", [])
    assert machine.apt_calls() == []


def test_everything_present_is_silent_and_installs_nothing(tmp_path):
    machine = Machine(tmp_path, uid=0)
    machine.add_dot()
    executable(machine.chromium, CHROMIUM)
    assert machine.run() == (0, "", [])
    assert machine.apt_calls() == []


@pytest.mark.parametrize("compat_built", [False, True])
def test_a_python_other_than_3_11_is_named_unless_the_compat_venv_exists(tmp_path, compat_built):
    machine = Machine(tmp_path, uid=1000, python="3.12")
    machine.add_dot()
    executable(machine.chromium, CHROMIUM)
    if compat_built:
        executable(tmp_path / ".venv-serving-compat" / "bin" / "python", "#!/bin/sh\n")
        assert machine.run() == (0, "", [])
        return
    returncode, _, lines = machine.run()
    assert returncode == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("make test needs Python 3.11") and "is 3.12" in lines[0]
    assert "PYTHON=python3.11" in lines[0]


def test_macos_names_brew_and_playwright_even_as_root(tmp_path):
    machine = Machine(tmp_path, distro=None, uid=0, kernel="Darwin")
    returncode, _, lines = machine.run()
    assert returncode == 1
    assert len(lines) == 2, lines
    assert "brew install graphviz" in lines[0]
    assert "playwright install chromium" in lines[1] and "apt-get" not in lines[1]
    assert machine.apt_calls() == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_test_checks_first_and_make_train_not_at_all():
    # As a make of its own, not a sub-make of the `make test` that runs this test.
    env = {key: value for key, value in os.environ.items()
           if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def commands(target):
        return subprocess.run(["make", "-n", "--no-print-directory", target], cwd=REPO,
                              env=env, capture_output=True, text=True,
                              check=True).stdout.splitlines()

    assert commands("test")[0].startswith("sh tests/system_tools.sh ")
    assert not [line for line in commands("train") if "system_tools" in line]
