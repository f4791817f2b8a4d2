"""Dependency invariants, checked with `cargo tree` (offline, from Cargo.lock):
router and worker ship without the test kit or a hyper server of their own,
and the binary links the test kit only with `--features bench`. Plus what a
shipped (bench-less) binary says when asked for `spindle bench`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

TESTKIT = "spindle-testkit"
CARGO = shutil.which("cargo")
needs_cargo = pytest.mark.skipif(CARGO is None, reason="cargo is not installed")


def tree(package: str, *args: str) -> list[str]:
    """`cargo tree` lines of the package's normal (shipped) dependencies: `name vX`."""
    out = subprocess.run(
        [CARGO or "cargo", "tree", "--offline", "--locked", "-p", package, "-e", "normal",
         "--prefix", "none", "-f", "{p}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return [line.split(" (")[0].strip() for line in out.splitlines() if line.strip()]


def names(lines: list[str]) -> set[str]:
    return {line.split(" ")[0] for line in lines}


@needs_cargo
@pytest.mark.parametrize("package", ["spindle-router", "spindle-worker"])
def test_shipped_crates_do_not_depend_on_the_test_kit(package):
    assert TESTKIT not in names(tree(package))
    # The fake worker was the router's only reason for a hyper server: hyper
    # (and hyper-util) may come through axum/reqwest, never directly.
    direct = names(tree(package, "--depth", "1"))
    assert not direct & {"hyper", "hyper-util", TESTKIT}, direct


@needs_cargo
def test_binary_links_the_test_kit_only_with_the_bench_feature():
    assert TESTKIT not in names(tree("spindle"))
    assert TESTKIT in names(tree("spindle", "--features", "bench"))


def test_bench_without_the_feature_says_how_to_build_it():
    assert BIN.exists(), f"{BIN} is missing: run scripts/test (it builds the release binary)"
    help_text = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "bench" in help_text and "--features bench" in help_text
    r = subprocess.run([str(BIN), "bench", "streams", "--url", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "--features bench" in r.stderr, r.stderr
