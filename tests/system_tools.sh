#!/bin/sh
# What `make test` needs from outside pip, checked before anything is installed:
# - Python 3.11: requirements.txt needs 3.11+, and .venv-serving-compat's TensorFlow 2.12
#   has no wheel for newer Pythons;
# - Graphviz's `dot`: the notebook's keras.utils.plot_model (tests/test_notebook.py);
# - a Chromium that Playwright drives (tests/test_demo.py, which finds it with
#   tests/browser.py): Debian's /usr/bin/chromium, or Playwright's own download.
# As root on Debian or Ubuntu it installs what is missing with apt-get (never sudo); Ubuntu's
# chromium package is a snap wrapper that does not run in containers, so there it names
# Playwright's. Otherwise it prints one line per missing tool, naming the command that
# installs it, and exits 1.
# Usage (the Makefile's variables): sh tests/system_tools.sh PYTHON VENV COMPAT_VENV
# SYSTEM_TOOLS_ROOT, for tests/test_system_tools.py, prefixes /etc/os-release and
# /usr/bin/chromium.

python=${1:-python3}
venv=${2:-.venv}
compat_venv=${3:-.venv-serving-compat}
here=${0%/*}
[ "$here" != "$0" ] || here=.
root=${SYSTEM_TOOLS_ROOT:-}
debian_chromium=$root/usr/bin/chromium

os=other
if [ "$(uname -s)" = Darwin ]; then
  os=macos
elif [ -r "$root/etc/os-release" ]; then
  os=$(. "$root/etc/os-release"
       case " $ID $ID_LIKE " in
         *" ubuntu "*) echo ubuntu ;;
         *" debian "*) echo debian ;;
         *) echo other ;;
       esac)
fi

python_version=
python_ok() {
  [ -x "$compat_venv/bin/python" ] && return 0  # built already, by a 3.11
  python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
  [ "$python_version" = 3.11 ]
}

dot_ok() { command -v dot >/dev/null 2>&1; }

# A browser counts only if it starts: Ubuntu's snap wrapper, or a download without its
# libraries, does not.
chromium_ok() {
  [ -x "$debian_chromium" ] && "$debian_chromium" --version >/dev/null 2>&1 && return 0
  [ -x "$venv/bin/python" ] && "$venv/bin/python" "$here/browser.py" >/dev/null 2>&1
}

if [ "$(id -u)" = 0 ] && { [ "$os" = debian ] || [ "$os" = ubuntu ]; } \
    && command -v apt-get >/dev/null 2>&1; then
  packages=
  dot_ok || packages=" graphviz"
  chromium_ok || [ "$os" = ubuntu ] || packages="$packages chromium"
  if [ -n "$packages" ]; then
    echo "make test: installing$packages with apt-get (root on $os)"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086  # one word per package
    apt-get update -qq && apt-get install -y -qq $packages
  fi
fi

playwright="make $venv/.demo && $venv/bin/python -m playwright install chromium"
case $os in
  debian)
    install_dot="as root, apt-get install graphviz"
    install_chromium="as root, apt-get install chromium; or Playwright's own: $playwright" ;;
  ubuntu)
    install_dot="as root, apt-get install graphviz"
    install_chromium="Ubuntu's chromium package is a snap wrapper that does not run in\
 containers, so use Playwright's own: $playwright (as root add --with-deps for its\
 libraries)" ;;
  macos)
    install_dot="brew install graphviz"
    install_chromium=$playwright ;;
  *)
    install_dot="install Graphviz with the system's package manager"
    install_chromium=$playwright ;;
esac

missing=0
need() {
  echo "make test needs $1" >&2
  missing=$((missing + 1))
}
python_ok || need "Python 3.11 ($python is ${python_version:-not found}; requirements.txt needs\
 3.11+, TensorFlow 2.12 of requirements-serving-compat.txt 3.11 at most): install it\
 (brew install python@3.11, apt-get install python3.11-venv), then make test PYTHON=python3.11"
dot_ok || need "Graphviz's dot (the notebook's model diagrams): $install_dot"
chromium_ok || need "a Chromium for Playwright (the demo's browser test): $install_chromium"
[ "$missing" = 0 ]
