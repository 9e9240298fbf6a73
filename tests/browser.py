"""The Chromium that tests/test_demo.py drives through Playwright: Playwright's own
download (`python -m playwright install chromium`, the build this Playwright is made for)
when it is there, else Debian's package (/usr/bin/chromium). A browser counts only if it
starts: Ubuntu's chromium package is a snap wrapper that does not run in containers.

Run as a script (tests/system_tools.sh does, before `make test` runs a test), it prints the
path it would use, or says that there is none and exits 1.
"""

import subprocess
import sys
from pathlib import Path

DEBIAN_CHROMIUM = "/usr/bin/chromium"


def starts(path):
    try:
        return subprocess.run([path, "--version"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def chromium_executable(playwright):
    """The first of Playwright's own Chromium and Debian's that starts."""
    own = playwright.chromium.executable_path
    for path in (own, DEBIAN_CHROMIUM):
        if Path(path).is_file() and starts(path):
            return path
    raise FileNotFoundError(
        f"no Chromium for Playwright starts: neither its own ({own}) nor Debian's "
        f"({DEBIAN_CHROMIUM}); tests/system_tools.sh (make test) says how to install one")


def main():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            print(chromium_executable(playwright))
        except FileNotFoundError as error:
            sys.exit(str(error))


if __name__ == "__main__":
    main()
