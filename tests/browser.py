"""Headless Chromium for the tests that open a page as a user would."""

import shutil
import subprocess

import pytest


def chromium() -> str:
    """The path of Debian's chromium, installed first when it is missing."""
    found = shutil.which("chromium")
    if found:
        return found
    # the test set-up installs Debian's chromium when it is missing (root, Debian)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"],
        check=False,
        capture_output=True,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    found = shutil.which("chromium")
    if not found:
        pytest.fail("Debian's chromium is needed for the gallery test and could not be installed")
    return found


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
